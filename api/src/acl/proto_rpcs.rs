//! Lists the RPCs of herd's own `.proto` files, for the tests that hold the
//! role tables (coordinators' and agents') against them.

/// Every RPC of `proto` (a `.proto` file's text) as a full gRPC path, for
/// the services named in `services` (`package.Service`), or every service
/// when `services` is None. A small reader of what herd's own `.proto`
/// files contain (`package`, `service X {`, `rpc Y(`), not a protobuf
/// parser.
pub fn rpcs_in_proto(proto: &str, services: Option<&[&str]>) -> Vec<String> {
    let mut package = String::new();
    let mut service: Option<String> = None;
    let mut rpcs = Vec::new();
    for line in proto.lines() {
        let line = line.split("//").next().unwrap_or("").trim();
        if let Some(rest) = line.strip_prefix("package ") {
            package = rest.trim_end_matches(';').trim().to_string();
        } else if let Some(rest) = line.strip_prefix("service ") {
            let name = rest.trim_end_matches('{').trim();
            service = Some(format!("{package}.{name}"));
        } else if line == "}" {
            service = None;
        } else if let (Some(svc), Some(rest)) = (&service, line.strip_prefix("rpc ")) {
            let wanted = services.is_none_or(|list| list.contains(&svc.as_str()));
            if let (true, Some((method, _))) = (wanted, rest.split_once('(')) {
                rpcs.push(format!("/{svc}/{}", method.trim()));
            }
        }
    }
    rpcs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_rpcs_are_read_with_their_package() {
        let proto = "package a.v1;\nservice S {\n  // rpc Commented(X) returns (Y);\n  rpc One(X) returns (Y);\n  rpc Two (X) returns (stream Y);\n}\nmessage M { }\nservice T {\n  rpc Three(X) returns (Y);\n}\n";
        assert_eq!(
            rpcs_in_proto(proto, None),
            vec!["/a.v1.S/One", "/a.v1.S/Two", "/a.v1.T/Three"]
        );
        assert_eq!(
            rpcs_in_proto(proto, Some(&["a.v1.T"])),
            vec!["/a.v1.T/Three"]
        );
    }
}
