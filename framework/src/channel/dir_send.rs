//! The hot directory operation, `send`, read in one pass. serde's internally tagged enums
//! (`DirOp`, `Target`) buffer their whole input before reading it, and a `send` is read twice
//! per push (by the directory, and by each node it is forwarded to); these plain structs read
//! the same JSON directly, as strictly: every field known, each variant's fields exactly,
//! `null` nowhere. Anything else is left to `DirOp`'s own reading (which words the error).

use serde::{Deserialize, Deserializer};

use super::dir::{ClientId, DirOp, Target};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Send {
    #[allow(dead_code)]
    op: SendTag,
    target: TargetFields,
    data: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum SendTag {
    Send,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum To {
    All,
    Clients,
    Uids,
    Groups,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFields {
    to: To,
    #[serde(default, deserialize_with = "present")]
    uids: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    client_ids: Option<Vec<ClientId>>,
    #[serde(default, deserialize_with = "present")]
    groups: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    exclude: Option<Vec<ClientId>>,
}

/// A field that is there (absent: `None` by default; `null` is refused, as `Vec` refuses it).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `json` read as a `send` (not yet checked: [`DirOp::check`]), or `None` when it is not one
/// in the form this reads — `DirOp`'s reading then decides.
pub(crate) fn parse(json: &[u8]) -> Option<DirOp> {
    if !json.starts_with(br#"{"op":"send","#) {
        return None;
    }
    let s: Send = serde_json::from_slice(json).ok()?;
    let t = s.target;
    let target = match (t.to, t.uids, t.client_ids, t.groups, t.exclude) {
        (To::All, None, None, None, exclude) => Target::All {
            exclude: exclude.unwrap_or_default(),
        },
        (To::Clients, None, Some(client_ids), None, None) => Target::Clients { client_ids },
        (To::Uids, Some(uids), None, None, None) => Target::Uids { uids },
        (To::Groups, None, None, Some(groups), exclude) => Target::Groups {
            groups,
            exclude: exclude.unwrap_or_default(),
        },
        _ => return None,
    };
    Some(DirOp::Send {
        target,
        data: s.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What `DirOp`'s own reading makes of `j` (None: refused).
    fn slow(j: &str) -> Option<DirOp> {
        serde_json::from_str::<DirOp>(j).ok()
    }

    #[test]
    fn reads_every_send_as_dirop_does_and_refuses_the_same() {
        let ops = [
            json!({"op": "send", "target": {"to": "uids", "uids": ["a", "b"]}, "data": "x\"y"}),
            json!({"op": "send", "target": {"to": "all"}, "data": ""}),
            json!({"op": "send", "target": {"to": "all", "exclude": ["1-2"]}, "data": "m"}),
            json!({"op": "send", "target": {"to": "clients", "client_ids": ["1-2", "3-4"]}, "data": "m"}),
            json!({"op": "send", "target": {"to": "groups", "groups": ["g"]}, "data": "m"}),
            json!({"op": "send", "target": {"to": "groups", "groups": ["g"], "exclude": ["1-2"]}, "data": "m"}),
        ];
        for j in ops {
            let op: DirOp = serde_json::from_value(j.clone()).unwrap();
            // As the encoder writes it (op first), and as read both ways.
            let text = op.to_json();
            assert_eq!(parse(&text), Some(op.clone()), "{j}");
            assert_eq!(slow(std::str::from_utf8(&text).unwrap()), Some(op));
        }
        for bad in [
            r#"{"op":"send","target":{"to":"uids","uids":["a"],"groups":["g"]},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"uids","uids":null},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"all","exclude":null},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"uids"},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"clients","client_ids":["12"]},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"everyone"},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"all"},"data":"m","extra":1}"#,
            r#"{"op":"send","target":{"to":"all","x":1},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"all"}}"#,
            r#"{"op":"send","target":{"to":"all"},"data":7}"#,
            r#"{"op":"send","target":{"to":"all"},"data":"m"} trailing"#,
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
            assert_eq!(slow(bad), None, "{bad}");
        }
        // Another operation, or `op` not first: left to DirOp.
        assert_eq!(
            parse(br#"{"op":"bind_uid","client_id":"1-2","uid":"a"}"#),
            None
        );
        assert_eq!(
            parse(br#"{"data":"m","op":"send","target":{"to":"all"}}"#),
            None
        );
    }
}
