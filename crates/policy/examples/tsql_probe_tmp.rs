fn main() {
    for sql in std::env::args().skip(1) {
        match pgward_policy::tsql::analyze_tsql(&sql, Some("app")) {
            Ok(a) => {
                let v: Vec<String> = a
                    .statements
                    .iter()
                    .map(|s| {
                        format!(
                            "{} acc={:?} fns={:?} set={:?} nu={:?}",
                            s.kind,
                            s.accesses
                                .iter()
                                .map(|x| format!("{} {}", x.action, x.object))
                                .collect::<Vec<_>>(),
                            s.functions
                                .iter()
                                .map(|f| f.to_string())
                                .collect::<Vec<_>>(),
                            s.settings,
                            s.not_understood
                        )
                    })
                    .collect();
                println!("{sql:?}\n   {}", v.join("\n   "));
            }
            Err(e) => println!("{sql:?}\n   ERR {e}"),
        }
    }
}
