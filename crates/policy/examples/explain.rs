//! `cargo run -p pgward-policy --example explain -- POLICY ROLE SQL...`: prints the explanation
//! for each SQL string (a development aid; the product command is `pgward policy explain`).

use pgward_policy::{Policy, SessionState};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [policy, role, sqls @ ..] = args.as_slice() else {
        return Err("usage: explain POLICY ROLE SQL...".into());
    };
    let policy = Policy::from_toml(&std::fs::read_to_string(policy)?)?;
    let roles = if role == "none" {
        policy.roles_named(&[])?
    } else {
        policy.roles_named(&[role.as_str()])?
    };
    let mut session = SessionState::new(&policy);
    for sql in sqls {
        print!("{}", policy.explain(&roles, sql, &session));
        // As the proxy does: only statements that were allowed (and ran) change the session.
        for st in policy.decide_query(&roles, sql, &session).statements {
            if !st.decision.blocks() {
                session.apply(&st.analysis);
            }
        }
        println!();
    }
    Ok(())
}
