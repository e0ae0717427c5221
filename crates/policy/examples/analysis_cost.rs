//! How long analysing hostile (and big legitimate) statements takes: each shape grown to
//! the size given (default 1 MiB), analysed once, timed. Used for docs/performance.md
//! ("Analysis cost"); run with
//! `cargo run -p pgward-policy --example analysis_cost -- [bytes]`.

use std::time::Instant;

fn fill(head: &str, unit: &str, tail: &str, size: usize) -> String {
    let n = size.saturating_sub(head.len() + tail.len()) / unit.len().max(1);
    format!("{head}{}{tail}", unit.repeat(n))
}

fn nested(open: &str, middle: &str, close: &str, size: usize) -> String {
    let n = size.saturating_sub(middle.len()) / (open.len() + close.len());
    format!("SELECT {}{middle}{}", open.repeat(n), close.repeat(n))
}

fn main() {
    let size: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1 << 20);
    let row = "(4217, 'a fairly ordinary item name', -17, '2024-05-06'::date, NULL, true),";
    let mut values = fill("INSERT INTO orders VALUES ", row, "", size);
    values.pop();
    let chains = |n: usize| {
        let mut s = fill("SELECT ", &format!("1{},", "+1".repeat(n)), "", size);
        s.pop();
        s
    };
    let mut short_rows = fill("INSERT INTO orders VALUES ", "(1,2,3),", "", size);
    short_rows.pop();
    let mut in_list = fill("SELECT * FROM orders WHERE id IN (", "123456,", "", size);
    in_list.pop();
    in_list.push(')');
    let shapes: Vec<(&str, String)> = vec![
        ("chained casts", fill("SELECT '1'", "::text", "", size)),
        ("operator chain", fill("SELECT 1", "+1", "", size)),
        ("150-operator chains", chains(150)),
        ("99-operator chains", chains(99)),
        ("unary minus chain", fill("SELECT ", "- ", "1", size)),
        ("NOT chain", fill("SELECT ", "NOT ", "true", size)),
        (
            "COLLATE chain",
            fill("SELECT 'a'", " COLLATE \"C\"", "", size),
        ),
        (
            "string concatenation",
            fill("SELECT 'a'", " || 'a'", "", size),
        ),
        ("nested parens", nested("(", "1", ")", size)),
        ("nested arrays", nested("ARRAY[", "1", "]", size)),
        ("nested subqueries", nested("(SELECT ", "1", ")", size)),
        (
            "nested CASE",
            nested("CASE WHEN true THEN ", "1", " END", size),
        ),
        (
            "subscript chain",
            fill("SELECT (ARRAY[1])", "[1]", "", size),
        ),
        (
            "field selection chain",
            fill("SELECT (row(1)::orders)", ".id", "", size),
        ),
        (
            "JOIN chain",
            fill("SELECT 1 FROM orders", " JOIN orders ON true", "", size),
        ),
        ("UNION chain", fill("SELECT 1", " UNION SELECT 1", "", size)),
        (
            "AND chain",
            fill("SELECT 1 FROM orders WHERE id = 1", " AND id = 1", "", size),
        ),
        ("long IN list", in_list),
        ("many statements", fill("", "SELECT 1;", "", size)),
        ("bulk INSERT (legitimate)", values),
        ("bulk INSERT, short rows", short_rows),
    ];
    let only: Option<String> = std::env::args().nth(2);
    println!("{:<28} {:>9} {:>10}  result", "shape", "bytes", "ms");
    for (name, sql) in shapes {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        if std::env::var_os("PARSE_ONLY").is_some() {
            let t = Instant::now();
            let r = pg_query::parse(&sql).map(|p| p.protobuf.stmts.len());
            println!(
                "{name:<28} parse only {:.1} ms {:?}",
                t.elapsed().as_secs_f64() * 1000.0,
                r.map_err(|e| e.to_string().chars().take(40).collect::<String>())
            );
        }
        let t = Instant::now();
        let r = pgward_policy::analyze_limited(&sql, usize::MAX);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let result = match r {
            Ok(a) => format!("analysed ({} statements)", a.statements.len()),
            Err(e) => format!(
                "refused: {}",
                e.to_string().chars().take(60).collect::<String>()
            ),
        };
        println!("{name:<28} {:>9} {ms:>10.1}  {result}", sql.len());
    }
}
