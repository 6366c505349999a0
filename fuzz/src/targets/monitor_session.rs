//! `monitor_session`: the harness monitor's line protocols (QEMU's HMP and
//! QMP, as `-monitor`/`-qmp` sockets speak them) against any sequence of
//! lines from a client: bad JSON, unknown commands, arguments of the wrong
//! type, `set_link` on names that do not exist. Every line gets a reply
//! (QMP replies are JSON) and nothing panics.

use arbitrary::{Arbitrary, Unstructured};
use monitor::options::MonitorProtocol;
use monitor::protocol::Session;

#[derive(Arbitrary, Debug)]
enum Line {
    /// Any text.
    Text(String),
    /// A QMP command with arbitrary arguments.
    Execute {
        command: String,
        name: Option<String>,
        up: Option<bool>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    qmp: bool,
    lines: Vec<Line>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let protocol = if input.qmp {
        MonitorProtocol::Qmp
    } else {
        MonitorProtocol::Hmp
    };
    let mut s = Session::new(protocol, &[]);
    let _ = s.greeting();
    let _ = s.too_long();
    for line in input.lines.iter().take(64) {
        let text = match line {
            Line::Text(t) => t.clone(),
            Line::Execute { command, name, up } => {
                let mut args = serde_json::Map::new();
                if let Some(n) = name {
                    args.insert("name".into(), n.clone().into());
                }
                if let Some(u) = up {
                    args.insert("up".into(), (*u).into());
                }
                serde_json::json!({"execute": command, "arguments": args}).to_string()
            }
        };
        let reply = s.line(&text);
        if input.qmp && !reply.text.is_empty() {
            for l in reply.text.lines() {
                assert!(
                    serde_json::from_str::<serde_json::Value>(l).is_ok(),
                    "QMP reply is not JSON: {l:?}"
                );
            }
        }
        if reply.close {
            break;
        }
    }
}
