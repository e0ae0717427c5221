//! A small TDS server standing in for Azure SQL Database in tests (no SQL Server can be
//! installed here). It speaks what pgward's tiberius client uses, over TDS 8.0 strict TLS
//! (the TLS handshake comes before any TDS byte, as Azure SQL does with Encrypt=Strict):
//! PRELOGIN (with FEDAUTHREQUIRED), LOGIN7 with the FEDAUTH feature extension (the access
//! token is recorded), LOGINACK, ENVCHANGE, SQLBatch (`EXECUTE AS USER ... WITH NO REVERT`,
//! recorded; unknown users fail with error 15517), RPC (`sp_set_session_context` and
//! `sp_executesql`), COLMETADATA, ROW / NBCROW, DONE / DONEINPROC / DONEPROC with row
//! counts, ERROR, and attention (answered with a DONE carrying the attention bit).
//!
//! Its catalogue is tiny and in memory:
//! - `dbo.orders (id int, item nvarchar(50), qty int)`: SELECT (optionally
//!   `WHERE id = n`), INSERT ... VALUES, UPDATE ... SET qty = n [WHERE id = n],
//!   DELETE [WHERE id = n]; a duplicate id fails with error 2627;
//! - `dbo.types`: one column of every type pgward maps (row 1 values, row 2 NULLs);
//! - `dbo.slow`: metadata, then waits for an attention (up to 20 s);
//! - `SELECT SESSION_CONTEXT(N'key')`, `SELECT 1/0` (error 8134); any other table is
//!   error 208, anything else error 102.
//!
//! Everything it receives is recorded for assertions ([`Recorded`]). Batches run through
//! `sp_executesql` are read as SQL Server reads them, with the SQL Server lexer of
//! pgward's policy crate (`pgward_policy::tsql::lexer`: `--` comments end at CR or LF,
//! nested block comments, `''` / `]]` / `""` escapes, money and real literals): statements
//! are split at `;` tokens, and the words the server read are recorded ([`Recorded::words`])
//! so tests can check that every statement keyword SQL Server saw was decided by pgward.
//! Text that lexer refuses fails as SQL Server's syntax error 102.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgward_policy::tsql::lexer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConnection, StreamOwned};

/// What the stand-in has received.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// FEDAUTH access tokens presented at login, in order.
    pub tokens: Vec<String>,
    /// (database, application name) of every login.
    pub logins: Vec<(String, String)>,
    /// `sp_set_session_context` calls: (key, value, read_only).
    pub session_context: Vec<(String, String, bool)>,
    /// SQLBatch texts.
    pub batches: Vec<String>,
    /// `sp_executesql @stmt` texts.
    pub statements: Vec<String>,
    /// For each of `statements`, the unquoted words (keywords and names, lower case) as
    /// SQL Server's lexer reads them: never what is inside strings, comments or delimited
    /// identifiers. Empty when the text does not lex.
    pub words: Vec<Vec<String>>,
    /// Attention packets.
    pub attentions: u32,
    /// Users impersonated with `EXECUTE AS USER = N'...' WITH NO REVERT` (successfully or
    /// not), in order.
    pub impersonations: Vec<String>,
    /// Whether each connection negotiated TLS with ALPN `tds/8.0`.
    pub alpn: Vec<Option<String>>,
}

#[derive(Clone)]
struct Order {
    id: i32,
    item: String,
    qty: i32,
}

struct Shared {
    recorded: Recorded,
    orders: Vec<Order>,
    /// When set, logins with another token fail (error 18456).
    accept_token: Option<String>,
    /// When set, only these database users can be impersonated (others: error 15517).
    database_users: Option<Vec<String>>,
}

/// A running stand-in; threads end with the process.
pub struct TdsStandIn {
    pub port: u16,
    pub ca: std::path::PathBuf,
    shared: Arc<Mutex<Shared>>,
    _dir: tempfile::TempDir,
}

impl TdsStandIn {
    /// Starts on a free loopback port with a certificate for 127.0.0.1 / localhost.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files =
            pgward_devkit::certs::generate(dir.path(), "tds", &["127.0.0.1", "localhost"]).unwrap();
        let config = Arc::new(server_config(&files.cert, &files.key));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(Shared {
            recorded: Recorded::default(),
            orders: vec![
                Order {
                    id: 1,
                    item: "widget".into(),
                    qty: 3,
                },
                Order {
                    id: 2,
                    item: "gadget".into(),
                    qty: 5,
                },
                Order {
                    id: 3,
                    item: "sprocket".into(),
                    qty: 7,
                },
            ],
            accept_token: None,
            database_users: None,
        }));
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                let (config, s) = (config.clone(), s.clone());
                std::thread::spawn(move || {
                    let _ = serve(tcp, config, s);
                });
            }
        });
        Self {
            port,
            ca: files.ca,
            shared,
            _dir: dir,
        }
    }

    /// Only this token signs in; others get error 18456.
    pub fn accept_only(&self, token: &str) {
        self.shared.lock().unwrap().accept_token = Some(token.to_owned());
    }

    /// Only these database users exist for `EXECUTE AS USER`.
    pub fn database_users(&self, users: &[&str]) {
        self.shared.lock().unwrap().database_users =
            Some(users.iter().map(|u| (*u).to_owned()).collect());
    }

    pub fn recorded(&self) -> Recorded {
        self.shared.lock().unwrap().recorded.clone()
    }
}

fn server_config(cert: &Path, key: &Path) -> rustls::ServerConfig {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    c.alpn_protocols = vec![b"tds/8.0".to_vec()];
    c
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

const PKT_BATCH: u8 = 0x01;
const PKT_RPC: u8 = 0x03;
const PKT_REPLY: u8 = 0x04;
const PKT_ATTENTION: u8 = 0x06;
const PKT_LOGIN7: u8 = 0x10;
const PKT_PRELOGIN: u8 = 0x12;

/// Reads one whole TDS message (packets up to end-of-message): (type, payload).
fn read_message(s: &mut Tls) -> std::io::Result<(u8, Vec<u8>)> {
    let mut payload = Vec::new();
    loop {
        let mut h = [0u8; 8];
        s.read_exact(&mut h)?;
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let mut body = vec![0u8; len.saturating_sub(8)];
        s.read_exact(&mut body)?;
        payload.extend_from_slice(&body);
        if h[1] & 0x01 != 0 {
            return Ok((h[0], payload));
        }
    }
}

fn write_message(s: &mut Tls, ty: u8, payload: &[u8]) -> std::io::Result<()> {
    write_packets(s, ty, payload, true)
}

/// Writes `payload` as packets; `end` marks the last one end-of-message.
fn write_packets(s: &mut Tls, ty: u8, payload: &[u8], end: bool) -> std::io::Result<()> {
    let max = 4096 - 8;
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[][..]]
    } else {
        payload.chunks(max).collect()
    };
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        let mut p = Vec::with_capacity(c.len() + 8);
        p.push(ty);
        p.push(if end && i + 1 == n { 0x01 } else { 0x00 });
        p.extend_from_slice(&u16::try_from(c.len() + 8).unwrap().to_be_bytes());
        p.extend_from_slice(&[0, 0, (i + 1) as u8, 0]);
        p.extend_from_slice(c);
        s.write_all(&p)?;
    }
    s.flush()
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

fn from_utf16(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

fn b_varchar(out: &mut Vec<u8>, s: &str) {
    let u = utf16(s);
    out.push((u.len() / 2) as u8);
    out.extend_from_slice(&u);
}

fn us_varchar(out: &mut Vec<u8>, s: &str) {
    let u = utf16(s);
    out.extend_from_slice(&((u.len() / 2) as u16).to_le_bytes());
    out.extend_from_slice(&u);
}

const DONE_MORE: u16 = 0x01;
const DONE_ERROR: u16 = 0x02;
const DONE_COUNT: u16 = 0x10;
const DONE_ATTN: u16 = 0x20;

fn done(out: &mut Vec<u8>, token: u8, status: u16, rows: u64) {
    out.push(token);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
}

fn error_token(out: &mut Vec<u8>, number: i32, message: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&number.to_le_bytes());
    body.push(1); // state
    body.push(16); // class
    us_varchar(&mut body, message);
    b_varchar(&mut body, "standin");
    b_varchar(&mut body, "");
    body.extend_from_slice(&1i32.to_le_bytes());
    length_token(out, 0xAA, &body);
}

/// ERROR, then the DONE-family `token` that ends with it.
fn error_done(out: &mut Vec<u8>, token: u8, number: i32, message: &str) {
    error_token(out, number, message);
    done(out, token, DONE_ERROR, 0);
}

/// A token whose body follows a u16 length.
fn length_token(out: &mut Vec<u8>, token: u8, body: &[u8]) {
    out.push(token);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(body);
}

fn env_change(out: &mut Vec<u8>, ty: u8, new: &str, old: &str) {
    let mut body = vec![ty];
    b_varchar(&mut body, new);
    b_varchar(&mut body, old);
    length_token(out, 0xE3, &body);
}

fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    shared: Arc<Mutex<Shared>>,
) -> std::io::Result<()> {
    let conn = ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    // Strict mode: TLS first. Drive the handshake by reading the first TDS header.
    let (ty, prelogin) = read_message(&mut s)?;
    let alpn = s
        .conn
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned());
    shared.lock().unwrap().recorded.alpn.push(alpn);
    if ty != PKT_PRELOGIN {
        return Ok(());
    }
    let client_encryption = prelogin_option(&prelogin, 0x01)
        .and_then(|v| v.first().copied())
        .unwrap_or(0);
    write_message(&mut s, PKT_REPLY, &prelogin_reply(client_encryption))?;

    let (ty, login) = read_message(&mut s)?;
    if ty != PKT_LOGIN7 {
        return Ok(());
    }
    let (token, database, app) = parse_login7(&login);
    let accepted = {
        let mut g = shared.lock().unwrap();
        g.recorded.tokens.push(token.clone().unwrap_or_default());
        g.recorded.logins.push((database.clone(), app));
        match (&g.accept_token, &token) {
            (None, Some(_)) => true,
            (Some(want), Some(got)) => want == got,
            _ => false,
        }
    };
    let mut out = Vec::new();
    if !accepted {
        error_done(
            &mut out,
            0xFD,
            18456,
            "Login failed for user '<token-identified principal>'.",
        );
        write_message(&mut s, PKT_REPLY, &out)?;
        return Ok(());
    }
    env_change(&mut out, 1, &database, "master");
    env_change(&mut out, 4, "4096", "4096");
    // LOGINACK: interface 1, TDS 7.4, program name, version.
    let mut ack = vec![1u8];
    ack.extend_from_slice(&0x7400_0004u32.to_be_bytes());
    b_varchar(&mut ack, "pgward TDS stand-in");
    ack.extend_from_slice(&[16, 0, 0, 0]);
    length_token(&mut out, 0xAD, &ack);
    done(&mut out, 0xFD, 0, 0);
    write_message(&mut s, PKT_REPLY, &out)?;

    let mut session = Session {
        context: Vec::new(),
        snapshot: None,
    };
    loop {
        let (ty, payload) = read_message(&mut s)?;
        let reply = match ty {
            PKT_BATCH => {
                let text = from_utf16(skip_all_headers(&payload));
                shared.lock().unwrap().recorded.batches.push(text.clone());
                session.batch(&text, &shared)
            }
            PKT_RPC => match session.rpc(skip_all_headers(&payload), &shared, &mut s)? {
                Some(reply) => reply,
                // Answered already (an attention ended the response).
                None => continue,
            },
            PKT_ATTENTION => {
                shared.lock().unwrap().recorded.attentions += 1;
                let mut out = Vec::new();
                done(&mut out, 0xFD, DONE_ATTN, 0);
                out
            }
            _ => return Ok(()),
        };
        write_message(&mut s, PKT_REPLY, &reply)?;
    }
}

/// The value of a PRELOGIN option.
fn prelogin_option(p: &[u8], want: u8) -> Option<&[u8]> {
    let mut i = 0;
    while i + 5 <= p.len() && p[i] != 0xFF {
        let (tok, off, len) = (
            p[i],
            usize::from(u16::from_be_bytes([p[i + 1], p[i + 2]])),
            usize::from(u16::from_be_bytes([p[i + 3], p[i + 4]])),
        );
        if tok == want {
            return p.get(off..off + len);
        }
        i += 5;
    }
    None
}

fn prelogin_reply(encryption: u8) -> Vec<u8> {
    // VERSION, ENCRYPTION, FEDAUTHREQUIRED, terminator, then the data.
    let opts: [(u8, Vec<u8>); 3] = [
        (0x00, vec![16, 0, 0x10, 0x00, 0, 0]),
        (0x01, vec![encryption]),
        (0x06, vec![1]),
    ];
    let mut off = opts.len() * 5 + 1;
    let mut head = Vec::new();
    let mut data = Vec::new();
    for (tok, v) in &opts {
        head.push(*tok);
        head.extend_from_slice(&(off as u16).to_be_bytes());
        head.extend_from_slice(&(v.len() as u16).to_be_bytes());
        data.extend_from_slice(v);
        off += v.len();
    }
    head.push(0xFF);
    head.extend_from_slice(&data);
    head
}

/// (FEDAUTH token, database, application name) from a LOGIN7 message.
fn parse_login7(l: &[u8]) -> (Option<String>, String, String) {
    let field = |at: usize| -> String {
        let off = usize::from(u16::from_le_bytes([l[at], l[at + 1]]));
        let len = usize::from(u16::from_le_bytes([l[at + 2], l[at + 3]])) * 2;
        l.get(off..off + len).map(from_utf16).unwrap_or_default()
    };
    let app = field(48);
    let database = field(68);
    // ibExtension points at a u32 offset of the FeatureExt block.
    let ext_at = usize::from(u16::from_le_bytes([l[56], l[57]]));
    let ext_len = u16::from_le_bytes([l[58], l[59]]);
    let mut token = None;
    if ext_len == 4 {
        let fe = u32::from_le_bytes(l[ext_at..ext_at + 4].try_into().unwrap()) as usize;
        let mut i = fe;
        while i < l.len() && l[i] != 0xFF {
            let id = l[i];
            let len = u32::from_le_bytes(l[i + 1..i + 5].try_into().unwrap()) as usize;
            let data = &l[i + 5..i + 5 + len];
            if id == 0x02 {
                // options (1), token length (4), token (UTF-16LE), optional nonce.
                let tlen = u32::from_le_bytes(data[1..5].try_into().unwrap()) as usize;
                token = Some(from_utf16(&data[5..5 + tlen]));
            }
            i += 5 + len;
        }
    }
    (token, database, app)
}

fn skip_all_headers(p: &[u8]) -> &[u8] {
    if p.len() < 4 {
        return p;
    }
    let total = u32::from_le_bytes(p[0..4].try_into().unwrap()) as usize;
    p.get(total..).unwrap_or(&[])
}

/// An RPC parameter value.
#[derive(Debug)]
enum Param {
    Str(String),
    Int(i64),
    Bit(bool),
    Null,
}

/// Decodes an RPC request: (procedure name, [(param name, value)]).
fn parse_rpc(p: &[u8]) -> (String, Vec<(String, Param)>) {
    let mut i = 0;
    let name_len = usize::from(u16::from_le_bytes([p[0], p[1]]));
    i += 2;
    let name = if name_len == 0xFFFF {
        let id = u16::from_le_bytes([p[i], p[i + 1]]);
        i += 2;
        format!("#{id}")
    } else {
        let n = from_utf16(&p[i..i + name_len * 2]);
        i += name_len * 2;
        n
    };
    i += 2; // option flags
    let mut params = Vec::new();
    while i < p.len() {
        let nlen = usize::from(p[i]) * 2;
        let pname = from_utf16(&p[i + 1..i + 1 + nlen]);
        i += 1 + nlen + 1; // name, status
        let ty = p[i];
        i += 1;
        let value = match ty {
            0xE7 | 0xEF | 0xA7 | 0xAF => {
                let max = u16::from_le_bytes([p[i], p[i + 1]]);
                i += 2 + 5; // max length, collation
                if max == 0xFFFF {
                    // PLP: total length, then chunks until a zero-length one.
                    i += 8;
                    let mut bytes = Vec::new();
                    loop {
                        let n = u32::from_le_bytes(p[i..i + 4].try_into().unwrap()) as usize;
                        i += 4;
                        if n == 0 {
                            break;
                        }
                        bytes.extend_from_slice(&p[i..i + n]);
                        i += n;
                    }
                    Param::Str(from_utf16(&bytes))
                } else {
                    let n = u16::from_le_bytes([p[i], p[i + 1]]);
                    i += 2;
                    if n == 0xFFFF {
                        Param::Null
                    } else {
                        let v = from_utf16(&p[i..i + usize::from(n)]);
                        i += usize::from(n);
                        Param::Str(v)
                    }
                }
            }
            0x68 | 0x26 => {
                i += 1; // max length
                let n = usize::from(p[i]);
                i += 1;
                let v = &p[i..i + n];
                i += n;
                match (ty, n) {
                    (_, 0) => Param::Null,
                    (0x68, _) => Param::Bit(v[0] != 0),
                    _ => {
                        let mut b = [0u8; 8];
                        b[..n].copy_from_slice(v);
                        Param::Int(i64::from_le_bytes(b))
                    }
                }
            }
            other => panic!("stand-in: RPC parameter type 0x{other:02x} not supported"),
        };
        params.push((pname, value));
    }
    (name, params)
}

/// How a statement ended.
enum Flow {
    Next,
    Error(i32, String),
    /// An attention ended the response (already answered).
    Attention,
}

struct Session {
    context: Vec<(String, String, bool)>,
    /// orders as they were at BEGIN TRANSACTION.
    snapshot: Option<Vec<Order>>,
}

/// One column of a canned result: (name, TYPE_INFO bytes).
type Col = (&'static str, Vec<u8>);

impl Session {
    fn batch(&mut self, text: &str, shared: &Arc<Mutex<Shared>>) -> Vec<u8> {
        let norm = normalize(text);
        let mut out = Vec::new();
        match norm.as_str() {
            "set xact_abort on" => {}
            n if n.starts_with("execute as user = n'") && n.ends_with("' with no revert") => {
                let quoted = &text[text.find('\'').unwrap_or(0)..text.rfind('\'').unwrap_or(0)];
                let user = quoted.trim_start_matches('\'').replace("''", "'");
                let mut g = shared.lock().unwrap();
                g.recorded.impersonations.push(user.clone());
                let exists = g.database_users.as_ref().is_none_or(|u| u.contains(&user));
                if !exists {
                    error_done(
                        &mut out,
                        0xFD,
                        15517,
                        &format!("Cannot execute as the database principal because the principal \"{user}\" does not exist, this type of principal cannot be impersonated, or you do not have permission."),
                    );
                    return out;
                }
            }
            "begin transaction" => {
                self.snapshot = Some(shared.lock().unwrap().orders.clone());
            }
            "commit transaction" => {
                if self.snapshot.take().is_none() {
                    error_done(
                        &mut out,
                        0xFD,
                        3902,
                        "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION.",
                    );
                    return out;
                }
            }
            "if @@trancount > 0 rollback transaction" => {
                if let Some(snap) = self.snapshot.take() {
                    shared.lock().unwrap().orders = snap;
                }
            }
            _ => {
                error_done(
                    &mut out,
                    0xFD,
                    102,
                    &format!("Incorrect syntax near '{text}'."),
                );
                return out;
            }
        }
        done(&mut out, 0xFD, 0, 0);
        out
    }

    fn rpc(
        &mut self,
        payload: &[u8],
        shared: &Arc<Mutex<Shared>>,
        s: &mut Tls,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let (name, params) = parse_rpc(payload);
        let get = |n: &str| params.iter().find(|(p, _)| p == n).map(|(_, v)| v);
        let mut out = Vec::new();
        match name.to_ascii_lowercase().as_str() {
            "sp_set_session_context" => {
                let key = match get("@key") {
                    Some(Param::Str(k)) => k.clone(),
                    _ => String::new(),
                };
                let value = match get("@value") {
                    Some(Param::Str(v)) => v.clone(),
                    _ => String::new(),
                };
                let ro = matches!(
                    get("@read_only"),
                    Some(Param::Bit(true)) | Some(Param::Int(1))
                );
                shared.lock().unwrap().recorded.session_context.push((
                    key.clone(),
                    value.clone(),
                    ro,
                ));
                if self.context.iter().any(|(k, _, r)| *k == key && *r) {
                    error_done(&mut out, 0xFE, 15664, &format!("Cannot set key '{key}' in the session context. The key has been set as read_only for this session."));
                } else {
                    self.context.retain(|(k, _, _)| *k != key);
                    self.context.push((key, value, ro));
                    out.push(0x79);
                    out.extend_from_slice(&0i32.to_le_bytes());
                    done(&mut out, 0xFE, 0, 0);
                }
            }
            "sp_executesql" => {
                let stmt = match get("@stmt") {
                    Some(Param::Str(v)) => v.clone(),
                    _ => String::new(),
                };
                let lexed = lexer::lex(&stmt);
                {
                    let mut g = shared.lock().unwrap();
                    g.recorded.statements.push(stmt.clone());
                    g.recorded.words.push(match &lexed {
                        Ok(tokens) => tokens
                            .iter()
                            .filter(|t| t.kind == lexer::Kind::Word)
                            .map(|t| t.value.to_ascii_lowercase())
                            .collect(),
                        Err(_) => Vec::new(),
                    });
                }
                let parts = match &lexed {
                    Ok(tokens) => split_statements(&stmt, tokens),
                    Err(e) => {
                        error_done(&mut out, 0xFF, 102, &format!("Incorrect syntax: {e}."));
                        vec![]
                    }
                };
                let mut failed = lexed.is_err();
                for part in parts {
                    match self.statement(&part, shared, &mut out, s)? {
                        Flow::Next => {}
                        Flow::Attention => return Ok(None),
                        Flow::Error(n, m) => {
                            error_done(&mut out, 0xFF, n, &m);
                            failed = true;
                            break;
                        }
                    }
                }
                out.push(0x79);
                out.extend_from_slice(&(if failed { -6i32 } else { 0 }).to_le_bytes());
                done(&mut out, 0xFE, if failed { DONE_ERROR } else { 0 }, 0);
            }
            other => {
                error_done(
                    &mut out,
                    0xFE,
                    2812,
                    &format!("Could not find stored procedure '{other}'."),
                );
            }
        }
        Ok(Some(out))
    }

    /// Runs one statement; appends its tokens to `out`.
    fn statement(
        &mut self,
        text: &str,
        shared: &Arc<Mutex<Shared>>,
        out: &mut Vec<u8>,
        s: &mut Tls,
    ) -> std::io::Result<Flow> {
        let n = normalize(text);
        let n = n.replace("[dbo].", "dbo.").replace(['[', ']'], "");
        let n = n.as_str();
        let table_of = |rest: &str| -> String {
            let t = rest.split_whitespace().next().unwrap_or("");
            t.trim_start_matches("dbo.").to_owned()
        };
        if n == "select 1/0" {
            return Ok(Flow::Error(
                8134,
                "Divide by zero error encountered.".into(),
            ));
        }
        if let Some(key) = n
            .strip_prefix("select session_context(n'")
            .and_then(|r| r.split('\'').next())
        {
            let v = self
                .context
                .iter()
                .find(|(k, _, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v, _)| v.clone());
            colmetadata(out, &[("value", nvarchar_ti(256))]);
            row(out, &[nvarchar(v.as_deref())]);
            done(out, 0xFF, DONE_MORE | DONE_COUNT, 1);
            return Ok(Flow::Next);
        }
        if let Some(rest) = n.strip_prefix("select * from ") {
            let table = table_of(rest);
            let filter = id_filter(rest);
            match table.as_str() {
                "orders" => {
                    let rows: Vec<Order> = shared
                        .lock()
                        .unwrap()
                        .orders
                        .iter()
                        .filter(|o| filter.is_none_or(|id| o.id == id))
                        .cloned()
                        .collect();
                    colmetadata(
                        out,
                        &[
                            ("id", vec![0x26, 4]),
                            ("item", nvarchar_ti(100)),
                            ("qty", vec![0x26, 4]),
                        ],
                    );
                    for o in &rows {
                        row(
                            out,
                            &[
                                intn(4, Some(i64::from(o.id))),
                                nvarchar(Some(&o.item)),
                                intn(4, Some(i64::from(o.qty))),
                            ],
                        );
                    }
                    done(out, 0xFF, DONE_MORE | DONE_COUNT, rows.len() as u64);
                }
                "types" => {
                    let (cols, values, nulls) = types_table();
                    colmetadata(out, &cols);
                    row(out, &values);
                    nbc_null_row(out, nulls);
                    done(out, 0xFF, DONE_MORE | DONE_COUNT, 2);
                }
                "slow" => {
                    colmetadata(out, &[("n", vec![0x26, 4])]);
                    // Send the metadata now (the message goes on), then wait for the
                    // client's attention.
                    write_packets(s, PKT_REPLY, out, false)?;
                    out.clear();
                    let deadline = Instant::now() + Duration::from_secs(20);
                    s.sock.set_read_timeout(Some(Duration::from_millis(50)))?;
                    loop {
                        let mut h = [0u8; 8];
                        match s.read_exact(&mut h) {
                            Ok(()) if h[0] == PKT_ATTENTION => {
                                s.sock.set_read_timeout(None)?;
                                shared.lock().unwrap().recorded.attentions += 1;
                                // The attention's DONE ends the whole response.
                                done(out, 0xFD, DONE_ATTN, 0);
                                write_message(s, PKT_REPLY, out)?;
                                out.clear();
                                return Ok(Flow::Attention);
                            }
                            Ok(()) => return Err(std::io::Error::other("unexpected packet")),
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) && Instant::now() < deadline => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                other => {
                    return Ok(invalid_object(other));
                }
            }
            return Ok(Flow::Next);
        }
        if let Some(rest) = n.strip_prefix("insert into ") {
            if let Some(unknown) = not_orders(&table_of(rest)) {
                return Ok(unknown);
            }
            let Some(values) = rest.split_once(" values ").map(|(_, v)| v) else {
                return Ok(Flow::Error(102, "Incorrect syntax near 'INSERT'.".into()));
            };
            let tuples = parse_tuples(values);
            let mut g = shared.lock().unwrap();
            for t in &tuples {
                let id = t.first().and_then(|v| v.parse::<i32>().ok()).unwrap_or(0);
                if g.orders.iter().any(|o| o.id == id) {
                    return Ok(Flow::Error(
                        2627,
                        format!("Violation of PRIMARY KEY constraint 'pk_orders'. Cannot insert duplicate key in object 'dbo.orders'. The duplicate key value is ({id})."),
                    ));
                }
                g.orders.push(Order {
                    id,
                    item: t.get(1).cloned().unwrap_or_default(),
                    qty: t.get(2).and_then(|v| v.parse().ok()).unwrap_or(0),
                });
            }
            done(out, 0xFF, DONE_MORE | DONE_COUNT, tuples.len() as u64);
            return Ok(Flow::Next);
        }
        if let Some(rest) = n.strip_prefix("update ") {
            if let Some(unknown) = not_orders(&table_of(rest)) {
                return Ok(unknown);
            }
            let qty: i32 = rest
                .split_once("set qty = ")
                .and_then(|(_, v)| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let filter = id_filter(rest);
            let mut g = shared.lock().unwrap();
            let mut count = 0;
            for o in g
                .orders
                .iter_mut()
                .filter(|o| filter.is_none_or(|id| o.id == id))
            {
                o.qty = qty;
                count += 1;
            }
            done(out, 0xFF, DONE_MORE | DONE_COUNT, count);
            return Ok(Flow::Next);
        }
        if let Some(rest) = n.strip_prefix("delete from ") {
            if let Some(unknown) = not_orders(&table_of(rest)) {
                return Ok(unknown);
            }
            let filter = id_filter(rest);
            let mut g = shared.lock().unwrap();
            let before = g.orders.len();
            g.orders.retain(|o| filter.is_some_and(|id| o.id != id));
            done(
                out,
                0xFF,
                DONE_MORE | DONE_COUNT,
                (before - g.orders.len()) as u64,
            );
            return Ok(Flow::Next);
        }
        let word = n.split_whitespace().next().unwrap_or("").to_owned();
        Ok(Flow::Error(102, format!("Incorrect syntax near '{word}'.")))
    }
}

/// Error 208: no such table.
fn invalid_object(table: &str) -> Flow {
    Flow::Error(208, format!("Invalid object name '{table}'."))
}

/// Error 208 for any table but `orders` (the only one that takes changes).
fn not_orders(table: &str) -> Option<Flow> {
    (table != "orders").then(|| invalid_object(table))
}

/// Lower case, whitespace collapsed, trailing `;` dropped (quoted text kept as written).
fn normalize(s: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    for c in s.trim().trim_end_matches(';').trim().chars() {
        if c == '\'' {
            in_str = !in_str;
        }
        if !in_str && c.is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else if in_str {
            out.push(c);
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// The statements of a batch: the text between `;` tokens as SQL Server's lexer reads
/// them (a `;` inside a string, comment or identifier does not split).
fn split_statements(s: &str, tokens: &[lexer::Token]) -> Vec<String> {
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut end = 0;
    for t in tokens {
        if t.is_punct(';') {
            if let Some(b) = start.take() {
                parts.push(s[b..end].to_owned());
            }
        } else {
            start.get_or_insert(t.start);
            end = t.end;
        }
    }
    if let Some(b) = start {
        parts.push(s[b..end].to_owned());
    }
    parts
}

fn id_filter(rest: &str) -> Option<i32> {
    rest.split_once("where id = ")
        .and_then(|(_, v)| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `(1, 'a', 2), (3, N'b', 4)` → values as text.
fn parse_tuples(s: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    let mut val = String::new();
    let (mut in_str, mut depth) = (false, 0);
    for c in s.chars() {
        match c {
            '\'' => in_str = !in_str,
            '(' if !in_str => {
                depth += 1;
                cur.clear();
                val.clear();
            }
            ')' if !in_str => {
                depth -= 1;
                cur.push(val.trim().trim_start_matches('n').to_owned());
                val.clear();
                out.push(std::mem::take(&mut cur));
            }
            ',' if !in_str && depth > 0 => {
                cur.push(val.trim().trim_start_matches('n').to_owned());
                val.clear();
            }
            _ if depth > 0 => val.push(c),
            _ => {}
        }
    }
    out
}

fn colmetadata(out: &mut Vec<u8>, cols: &[Col]) {
    out.push(0x81);
    out.extend_from_slice(&(cols.len() as u16).to_le_bytes());
    for (name, ti) in cols {
        out.extend_from_slice(&0u32.to_le_bytes()); // user type
        out.extend_from_slice(&0x0009u16.to_le_bytes()); // nullable, updateable unknown
        out.extend_from_slice(ti);
        b_varchar(out, name);
    }
}

fn row(out: &mut Vec<u8>, values: &[Vec<u8>]) {
    out.push(0xD1);
    for v in values {
        out.extend_from_slice(v);
    }
}

/// NBCROW with every column NULL.
fn nbc_null_row(out: &mut Vec<u8>, columns: usize) {
    out.push(0xD2);
    let bytes = columns.div_ceil(8);
    for i in 0..bytes {
        let bits_here = (columns - i * 8).min(8);
        out.push(((1u16 << bits_here) - 1) as u8);
    }
}

const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];

/// TYPE_INFO of a binary type: type, max length.
fn bin_ti(ty: u8, max: u16) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&max.to_le_bytes());
    v
}

/// TYPE_INFO of a character type: type, max length, collation.
fn varchar_ti(ty: u8, max: u16) -> Vec<u8> {
    let mut v = bin_ti(ty, max);
    v.extend_from_slice(&COLLATION);
    v
}

fn nvarchar_ti(max_bytes: u16) -> Vec<u8> {
    varchar_ti(0xE7, max_bytes)
}

/// A value with a u16 length (USHORTLEN types).
fn short(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_le_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

fn nvarchar(s: Option<&str>) -> Vec<u8> {
    match s {
        None => 0xFFFFu16.to_le_bytes().to_vec(),
        Some(s) => short(&utf16(s)),
    }
}

fn intn(len: u8, v: Option<i64>) -> Vec<u8> {
    match v {
        None => vec![0],
        Some(x) => {
            let mut out = vec![len];
            out.extend_from_slice(&x.to_le_bytes()[..usize::from(len)]);
            out
        }
    }
}

/// 3-byte day count since 0001-01-01.
fn date3(days: u32) -> Vec<u8> {
    days.to_le_bytes()[..3].to_vec()
}

/// TIME at scale 7: 5 bytes of 100 ns increments.
fn time5(increments: u64) -> Vec<u8> {
    increments.to_le_bytes()[..5].to_vec()
}

/// The `dbo.types` table: columns, the row of values, and the column count (for the NULL
/// row). The expected PostgreSQL text of each value is in the test.
fn types_table() -> (Vec<Col>, Vec<Vec<u8>>, usize) {
    let with_len = |b: Vec<u8>| {
        let mut v = vec![b.len() as u8];
        v.extend(b);
        v
    };
    // 2024-03-01 is day 738945 after 0001-01-01; 12:34:56.789 at scale 7.
    let day = 738_945u32;
    let t = (12 * 3600 + 34 * 60 + 56) * 10_000_000u64 + 7_890_000;
    let cols: Vec<Col> = vec![
        ("c_tinyint", vec![0x26, 1]),
        ("c_smallint", vec![0x26, 2]),
        ("c_int", vec![0x26, 4]),
        ("c_bigint", vec![0x26, 8]),
        ("c_bit", vec![0x68, 1]),
        ("c_decimal", vec![0x6A, 17, 10, 2]),
        ("c_numeric", vec![0x6C, 17, 38, 4]),
        ("c_money", vec![0x6E, 8]),
        ("c_real", vec![0x6D, 4]),
        ("c_float", vec![0x6D, 8]),
        ("c_char", varchar_ti(0xAF, 10)),
        ("c_varchar", varchar_ti(0xA7, 50)),
        ("c_nchar", nvarchar_ti(20)),
        ("c_nvarchar", nvarchar_ti(100)),
        ("c_date", vec![0x28]),
        ("c_time", vec![0x29, 7]),
        ("c_datetime", vec![0x6F, 8]),
        ("c_smalldatetime", vec![0x6F, 4]),
        ("c_datetime2", vec![0x2A, 7]),
        ("c_datetimeoffset", vec![0x2B, 7]),
        ("c_uniqueidentifier", vec![0x24, 16]),
        ("c_binary", bin_ti(0xAD, 4)),
        ("c_varbinary", bin_ti(0xA5, 50)),
    ];
    // decimal(10,2) 12345.67: sign 1, magnitude 1234567 in 16 bytes (length 17).
    let mut dec = vec![17u8, 1];
    dec.extend_from_slice(&1_234_567u128.to_le_bytes());
    // numeric(38,4) -0.5000: sign 0, magnitude 5000.
    let mut num = vec![17u8, 0];
    num.extend_from_slice(&5000u128.to_le_bytes());
    // money 42.5 = 425000 ten-thousandths: high 4 bytes then low 4 bytes.
    let m: i64 = 425_000;
    let mut money = vec![8u8];
    money.extend_from_slice(&((m >> 32) as i32).to_le_bytes());
    money.extend_from_slice(&(m as u32).to_le_bytes());
    // datetime 2024-03-01 12:34:56.790 = 45350 days after 1900-01-01, 13_576_437 ticks.
    let mut datetime = vec![8u8];
    datetime.extend_from_slice(&45_350i32.to_le_bytes());
    datetime.extend_from_slice(&((12 * 3600 + 34 * 60 + 56) * 300 + 237u32).to_le_bytes());
    // smalldatetime 2024-03-01 12:35.
    let mut small = vec![4u8];
    small.extend_from_slice(&45_350u16.to_le_bytes());
    small.extend_from_slice(&(12u16 * 60 + 35).to_le_bytes());
    let mut dt2 = time5(t);
    dt2.extend(date3(day));
    // datetimeoffset stored as UTC 10:34:56.789 with offset +120 minutes.
    let mut dto = time5(t - 2 * 3600 * 10_000_000);
    dto.extend(date3(day));
    dto.extend_from_slice(&120i16.to_le_bytes());
    // uniqueidentifier 6f9619ff-8b86-d011-b42d-00c04fc964ff, as SQL Server orders bytes.
    let guid = vec![
        0xff, 0x19, 0x96, 0x6f, 0x86, 0x8b, 0x11, 0xd0, 0xb4, 0x2d, 0x00, 0xc0, 0x4f, 0xc9, 0x64,
        0xff,
    ];
    let values = vec![
        intn(1, Some(255)),
        intn(2, Some(-32768)),
        intn(4, Some(2_147_483_647)),
        intn(8, Some(-9_007_199_254_740_993)),
        vec![1, 1],
        dec,
        num,
        money,
        with_len(1.5f32.to_le_bytes().to_vec()),
        with_len(2.25f64.to_le_bytes().to_vec()),
        short(b"abc       "),
        short(b"hello"),
        nvarchar(Some("ñandú     ")),
        nvarchar(Some("Grüße, 世界")),
        with_len(date3(day)),
        with_len(time5(t)),
        datetime,
        small,
        with_len(dt2),
        with_len(dto),
        with_len(guid),
        short(&[0xde, 0xad, 0xbe, 0xef]),
        short(&[0x00, 0x01, 0xff]),
    ];
    let n = cols.len();
    (cols, values, n)
}
