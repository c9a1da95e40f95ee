//! Our YAML reader against PyYAML's `safe_load`, the reader cloud-init uses, on the same texts:
//! what PyYAML refuses we refuse, and what both read they read as the same value. We may refuse
//! more, only where the reader says so (a repeated key, an alias bomb, an alias to the node it
//! sits in, and libyaml's one stricter corner: `{a:[b]}`).
//!
//! The texts are a hand-picked set of YAML 1.1 corners and a few thousand generated documents:
//! nested block and flow collections of tricky scalars, with anchors, aliases, merge keys and
//! tags, some of them then damaged by one random edit.

mod common;

use mesh_cloudinit::yaml::{load, LoadError};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use serde_json::Value;

/// Loads every text with PyYAML in one process. Each result is `{"ok": value}` with the value
/// spelt as our reader spells what JSON cannot hold, `{"circular": true}` for a document that
/// refers to itself, or `{"error": message}`.
fn pyyaml(texts: &[String]) -> Vec<Value> {
    common::require(common::SYSTEM_PYTHON, "python3-yaml");
    let script = r#"
import datetime, json, math, sys, yaml
class YBool:
    """A boolean that is not the integer 1 or 0 as a key (in Python, True == 1)."""
    def __init__(self, v): self.v = v
    def __hash__(self): return hash(("bool", self.v))
    def __eq__(self, o): return isinstance(o, YBool) and o.v == self.v
class Loader(yaml.SafeLoader): pass
Loader.add_constructor("tag:yaml.org,2002:bool",
    lambda loader, node: YBool(yaml.SafeLoader.construct_yaml_bool(loader, node)))
def key(k):
    if isinstance(k, YBool): return "true" if k.v else "false"
    if isinstance(k, str): return k
    if isinstance(k, (datetime.date, datetime.datetime)): return str(k)
    if isinstance(k, int) and not isinstance(k, bool) and not -2**63 <= k < 2**64:
        return repr(float(k))
    return json.loads(json.dumps({k: 0})).popitem()[0]
def norm(v):
    if isinstance(v, YBool): return v.v
    if isinstance(v, bytes): return "\u0000binary"  # we keep the base64 text as written
    if isinstance(v, dict): return {key(k): norm(x) for k, x in v.items()}
    if isinstance(v, set): return {key(k): None for k in v}
    if isinstance(v, (list, tuple)): return [norm(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v): return None
    if isinstance(v, int) and not isinstance(v, bool) and not -2**63 <= v < 2**64: return float(v)
    # We keep a timestamp's text; a date's str() is that text, a datetime's is not.
    if isinstance(v, datetime.datetime): return "\u0000timestamp"
    if isinstance(v, datetime.date): return str(v)
    return v
out = []
for text in json.load(sys.stdin):
    try:
        value = yaml.load(text, Loader=Loader)
    except Exception as e:
        out.append({"error": str(e)})
        continue
    try:
        out.append({"ok": json.loads(json.dumps(norm(value)))})
    except (ValueError, RecursionError):
        out.append({"circular": True})
json.dump(out, sys.stdout)
"#;
    let input = serde_json::to_vec(texts).expect("strings serialize");
    let output = common::run(
        std::process::Command::new(common::SYSTEM_PYTHON).arg("-c").arg(script),
        &input,
    );
    assert!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).expect("python wrote JSON");
    assert_eq!(results.len(), texts.len());
    results
}

/// How each side took the texts.
#[derive(Debug, Default)]
struct Tally {
    /// Refused by PyYAML (and so by us).
    they_refused: usize,
    /// Read by PyYAML, refused by us on purpose (a repeated key, ...).
    we_refused_on_purpose: usize,
    /// Read by PyYAML, refused by libyaml's stricter syntax (`{a:[b]}`, `[? ]`).
    libyaml_stricter: Vec<String>,
    /// Read alike by both.
    read: usize,
}

/// Equal values, floats to within a rounding step (serde_json's default float parsing, used
/// for PyYAML's side, is not always correctly rounded).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            x == y || (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        // `!!binary`: PyYAML decodes it, we keep the text; both must be strings.
        (Value::String(_), Value::String(w)) if w == "\u{0}binary" || w == "\u{0}timestamp" => true,
        _ => a == b,
    }
}

/// The refusals our reader makes on purpose where PyYAML reads the text.
fn on_purpose(e: &LoadError) -> bool {
    e.message.contains("appears twice in one mapping")
        || e.message.contains("anchors and aliases take")
        || e.message.contains("contains itself")
        || e.message.contains("on a list or mapping")
        // An alias of a `=` key used as a value: PyYAML reads it or not depending on the order
        // in which it builds the mappings.
        || e.message.contains("cannot be a value")
}

/// Checks every text against PyYAML.
fn agree(texts: &[String]) -> Tally {
    let theirs = pyyaml(texts);
    let mut tally = Tally::default();
    for (text, theirs) in texts.iter().zip(&theirs) {
        let ours = load(text);
        let circular = theirs.get("circular").is_some();
        match (theirs.get("ok"), &ours) {
            (Some(want), Ok(got)) => {
                assert!(same(got, want), "we read {got} but PyYAML {want} from:\n{text}");
                tally.read += 1;
            }
            (Some(_), Err(e)) if e.syntax => tally.libyaml_stricter.push(format!("{e}: {text:?}")),
            (Some(_), Err(e)) => {
                assert!(on_purpose(e), "we refuse what PyYAML reads ({e}):\n{text}");
                tally.we_refused_on_purpose += 1;
            }
            (None, Ok(got)) if circular => {
                panic!("PyYAML reads a self-referring document we read as {got}:\n{text}")
            }
            (None, Err(e)) if circular => {
                assert!(e.syntax || on_purpose(e), "{e}:\n{text}");
                tally.we_refused_on_purpose += 1;
            }
            (None, Ok(got)) => panic!(
                "we read {got} where PyYAML refuses ({}):\n{text}",
                theirs["error"].as_str().unwrap_or("?")
            ),
            (None, Err(_)) => tally.they_refused += 1,
        }
    }
    tally
}

#[test]
fn yaml11_corners_read_as_pyyaml_reads_them() {
    let texts = [
        "a: 1e3\nb: 1.0e+3\nc: .5\nd: -.5\ne: 1_000\nf: 0o17\ng: 017\nh: 12:30\ni: 1:2.5\n",
        "j: 0b101\nk: +12\nl: 2001-12-14\nm: .inf\nn: -.INF\no: .NaN\np: 0x_1F\nq: 00\nr: 09\n",
        "s: 1:60\nt: 190:20:30\nu: -0\nv: +0.5e-3\nw: 1.\nx: 1_2.3_4\ny: 0b\nz: 0x\n",
        "a: yes\nb: Yes\nc: YES\nd: yEs\ne: y\nf: n\ng: on\nh: Off\ni: TRUE\nj: ~\nk: Null\nl:\n",
        "a: ! 12\nb: ! '12'\nc: !!str 12\nd: !!int '0x10'\ne: !!bool yes\nf: !!float 1\n",
        "a: !!null x\nb: !!str\nc: !!int 1_000\nd: !!float '1:30.5'\n",
        "a: !foo x\n",
        "a: !!int x\n",
        "a: !!bool maybe\n",
        "a: =\n",
        "=: 1\n",
        "a: &x 1\nb: &x 2\n",
        "a: *y\n",
        "a: &x [*x]\n",
        "a: &x {b: *x}\n",
        "? [a, b]\n: c\n",
        "? {a: 1}\n: c\n",
        "<<: {a: 1, c: 1}\n<<: {a: 2}\nb: 3\nc: 4\n",
        "<<: [{a: 1}, {a: 2, b: 2}]\n",
        "x: &a {p: 1, q: 1}\ny:\n  <<: *a\n  p: 2\n",
        "x: &a {p: 1}\ny: &b {q: 2}\nz:\n  <<: [*a, *b]\n",
        "<<: 1\n",
        "<<: [1]\n",
        "'<<': {a: 1}\n",
        "%YAML 1.1\n---\na: 1\n",
        "%YAML 1.2\n---\na: 1\n",
        "%TAG !e! tag:example.com,2000:\n---\na: !e!x 1\n",
        "--- !!map\na: 1\n",
        "--- !!set\n? a\n? b\n",
        "a: !!seq [1]\nb: !!map {c: 1}\n",
        "a: 1\n---\nb: 2\n",
        "---\na: 1\n...\n",
        "",
        "# only a comment\n",
        "~\n",
        "- 1\n- two\n",
        "plain text\n",
        "a: {b: 1, b: 2}\n",
        "? a\n? a\n",
        "a:\n  - &x {p: 1}\n  - *x\n",
        "1: a\n0x1: b\n",
        "yes: a\nno: b\n~: c\n1.5: d\n",
        "a: |\n  line\n   more\n\nb: >-\n  folded\n  text\n",
        "a: \"esc \\t \\u00e9 \\x41\"\nb: 'it''s'\n",
        "a: b: c\n",
        "a: [1, 2\n",
        "a: 'x\n",
        "- a\nb: c\n",
        "a:\n\t- x\n",
        "a: \"\\q\"\n",
        "a: @x\n",
        "a: `x\n",
        "[a, b]: c\n",
        "{a: 1}\n",
        "a: [b, {c: d}, [e]]\n",
        "a: &anchor\nb: *anchor\n",
        "? |\n  block key\n: v\n",
        "a: 12345678901234567890123\nb: -9223372036854775808\nc: 18446744073709551615\n",
        "a: 0b11111111111111111111111111111111111111111111111111111111111111111111\n",
        // Found by a break-it pass: values PyYAML cannot build, which it then refuses.
        "my_date: 2024-02-30\n",
        "a: 2001-13-45\n",
        "a: 2001-12-14 25:00:00\n",
        "a: 0000-01-01\n",
        "a: 2001-12-14 21:59:43.10 -5\nb: 2001-12-14t21:59:43.10-05:00\nc: 2024-02-29\n",
        "a: 2001-12-14 21:59:43 +24\n",
        "content: !!binary |\n  aGVsbG8gd29ybGQ\n",
        "a: !!binary \u{e9}\n",
        "a: !!binary aGk=\nb: !!binary |\n  aGVs\n  bG8=\n",
        "a: 0b_\n",
        "a: 0x_\n",
        "a: +0x_\n",
        "content: | \t\n  x\n",
        "a: |  \t# c\n  x\n",
        "a: |  # c\t\n  x\n",
        "a: !!timestamp hello\n",
        "a: !!timestamp ''\n",
        "a: !!int \"01:30\"\n",
        "a: !!int 0:30\n",
        "a: !!omap [a, b]\n",
        "a: !!omap [{x: 1, y: 2}]\n",
        "a: !!omap [{x: 1}, {y: 2}]\nb: !!pairs [{x: 1}, {x: 2}]\n",
        "a: ! >\n  true\n",
        "a: ! |\n  12\nb: ! \"null\\n\"\nc: ! |\n  1.5\n",
        "# note\rb:\tc\r",
        "# note\u{85}b:\tc\n",
        "# note\u{2028}b:\tc\n",
        "- {&m << : {a: 1}}\n- *m\n",
        "&m <<: {a: 1}\n*m : {b: 2}\n",
        "x: &k =\n",
        "true: a\n1: b\n",
        "0: a\nno: b\n",
        "1: a\n1.0: b\n",
        "<<: {1: a}\n1.0: b\n",
        "a: 0x1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF\n",
        "a: 1:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00\n",
        "--- !!set\na: 1\n",
        "\u{feff}a: |\n  x\n",
        "\u{feff}a:\t\"xyz\"\n",
        // Found by a second break-it pass.
        "password: &a #c\n  !!str\t'pw'\n",
        "a: !!str #c\n  &x\t'y'\n",
        "a: &x #\n  |#x\n",
        "- &x #\n  |2#\n  x\n",
        "a: !!str\u{85}|#x\n",
        "a: !!binary # base64 follows\n  |\n  aGVsbG8=\n",
        "a: !<tag:yaml.org,2002:int%00junk> '12'\n",
        "%TAG !e! tag:yaml.org,2002:i%00\n---\na: !e!nt '12'\n",
        "a: [!<tag:yaml.org,2002:str> 1]\n",
        "a: !!binary 'YQ=a'\n",
        "a: !!binary '=YQ='\n",
        "a: !!binary 'Y=Q='\n",
        "a: !!binary 'aGVsbG8=xyz'\n",
        "a: 2001-12-14 21:59:43 +23:60\n",
        "a: 2001-12-14 21:59:43 +23:59\n",
        "%YAML 1.1#c\n---\na: 1\n",
        "a: ! |\n  .inf\n",
        "a: ! \"<<\\n\"\n",
        "a: ! \"=\\n\"\n",
        "a: ! \"\\n\"\n",
        "<<: {x: 1}\n! \"<<\\n\": {y: 1}\n",
        "a: {&x =: 1}\nb: *x\n",
        "{'yes': 1, 'true': 2}\n",
        "'1.10': a\n'1.1': b\n",
        "'': 1\n~: 2\n",
        "a: \"x\n\ty\"\n",
    ];
    let mut texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    // Nesting: PyYAML gives up (RecursionError) long before 5,000 levels. (Reading back
    // JSON nested past 128 levels is more than serde_json does; the next test checks that
    // PyYAML reads our deepest.)
    let deep = |n: usize| format!("{}{}\n", "[".repeat(n), "]".repeat(n));
    texts.extend([deep(100), deep(5_000)]);
    let tally = agree(&texts);
    assert!(tally.they_refused >= 15, "the corners include refusals: {tally:?}");
    assert!(tally.libyaml_stricter.is_empty(), "{tally:?}");
}

#[test]
fn pyyaml_reads_the_deepest_nesting_we_read() {
    let depth = mesh_cloudinit::yaml::MAX_DEPTH;
    let text = format!("a: {}{}\n", "[".repeat(depth - 1), "]".repeat(depth - 1));
    load(&text).expect("we read it");
    common::require(common::SYSTEM_PYTHON, "python3-yaml");
    let script = "import sys, yaml; yaml.safe_load(sys.stdin.read()); print('read')";
    let mut python = std::process::Command::new(common::SYSTEM_PYTHON);
    let output = common::run(python.args(["-c", script]), text.as_bytes());
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "read", "{output:?}");
}

/// A generated document: scalars from a set of YAML 1.1 troublemakers, in nested block or flow
/// collections, sometimes anchored, aliased, merged or tagged.
#[derive(Debug, Clone)]
enum Node {
    Scalar(String),
    Seq(Vec<Node>, bool),
    Map(Vec<(String, Node)>, bool),
    Anchored(&'static str, Box<Node>),
    Alias(&'static str),
}

const PLAIN: &[&str] = &[
    "a",
    "b c",
    "yes",
    "No",
    "on",
    "OFF",
    "y",
    "true",
    "null",
    "~",
    "0755",
    "0o755",
    "0x1F",
    "0b101",
    "1_000",
    "12:30",
    "1:20:30",
    "1:60",
    "1e3",
    "1.0e+3",
    "1.5",
    ".5",
    "-.5",
    "+1",
    "-0",
    "09",
    "007",
    "2001-12-14",
    "=",
    "<<",
    "a:b",
    "a#b",
    "-a",
    "x y z",
    "é",
    "1.2.3",
    "0.",
    "123456789012345678901234567890",
];
const QUOTED: &[&str] = &["'yes'", "\"1\"", "'a: b'", "\"#x\"", "''", "\"\\t\"", "'<<'", "\"=\""];
const TAGS: &[&str] = &["!!str ", "!!int ", "!!float ", "!!bool ", "!!null ", "! ", "!x "];
const ANCHORS: &[&str] = &["a1", "a2", "a3"];

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(PLAIN).prop_map(str::to_owned),
        2 => prop::sample::select(QUOTED).prop_map(str::to_owned),
        1 => (prop::sample::select(TAGS), prop::sample::select(PLAIN))
            .prop_map(|(t, s)| format!("{t}{s}")),
    ]
}

/// Keys. No boolean among them: Python takes `True` and `1` for the same key, so PyYAML's
/// result would hold one entry where the document has two.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(
        &["k", "id", "1", "0x1", "0o1", "~", "1.5", "x y", "'q'", "!!str 1", "<<", "=", "a:b"][..],
    )
    .prop_map(str::to_owned)
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        8 => scalar().prop_map(Node::Scalar),
        1 => prop::sample::select(ANCHORS).prop_map(Node::Alias),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            3 => (prop::collection::vec(inner.clone(), 0..5), any::<bool>())
                .prop_map(|(v, flow)| Node::Seq(v, flow)),
            4 => (prop::collection::vec((key(), inner.clone()), 0..5), any::<bool>())
                .prop_map(|(v, flow)| Node::Map(v, flow)),
            1 => (prop::sample::select(ANCHORS), inner)
                .prop_map(|(a, n)| Node::Anchored(a, Box::new(n))),
        ]
    })
}

/// Block nodes go on their own lines under `indent`; flow nodes and scalars stay inline.
fn render(node: &Node, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match node {
        Node::Scalar(s) => out.push_str(s),
        Node::Alias(a) => {
            out.push('*');
            out.push_str(a);
        }
        Node::Anchored(a, inner) => {
            out.push('&');
            out.push_str(a);
            out.push(' ');
            render(inner, indent, out);
        }
        Node::Seq(items, true) | Node::Seq(items, false) if items.is_empty() => out.push_str("[]"),
        Node::Map(items, true) | Node::Map(items, false) if items.is_empty() => out.push_str("{}"),
        Node::Seq(items, true) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(&flatten(item), 0, out);
            }
            out.push(']');
        }
        Node::Map(items, true) => {
            out.push('{');
            for (i, (k, v)) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push_str(": ");
                render(&flatten(v), 0, out);
            }
            out.push('}');
        }
        Node::Seq(items, false) => {
            for item in items {
                out.push('\n');
                out.push_str(&pad);
                out.push_str("- ");
                render(item, indent + 2, out);
            }
        }
        Node::Map(items, false) => {
            for (k, v) in items {
                out.push('\n');
                out.push_str(&pad);
                out.push_str(k);
                out.push_str(": ");
                render(v, indent + 2, out);
            }
        }
    }
}

/// The same node with every collection in flow style (block style cannot nest in flow).
fn flatten(node: &Node) -> Node {
    match node {
        Node::Seq(v, _) => Node::Seq(v.iter().map(flatten).collect(), true),
        Node::Map(v, _) => {
            Node::Map(v.iter().map(|(k, n)| (k.clone(), flatten(n))).collect(), true)
        }
        Node::Anchored(a, n) => Node::Anchored(a, Box::new(flatten(n))),
        other => other.clone(),
    }
}

/// One random edit of the kind a hand-written file gets, or none.
fn damage() -> impl Strategy<Value = Option<(usize, usize, &'static str)>> {
    let pieces = &[
        ":", "- ", "[", "{", "]", "}", "'", "\"", "\t", "  ", "\n", "&a1 ", "*a1 ", "!", "#", ",",
        "? ", "---\n", "<<: ", "|", "%",
    ][..];
    prop_oneof![
        2 => Just(None),
        1 => (any::<usize>(), 0usize..3, prop::sample::select(pieces)).prop_map(Some),
    ]
}

#[test]
fn generated_documents_read_as_pyyaml_reads_them() {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let strategy = (node(), damage());
    let mut texts = Vec::new();
    while texts.len() < 30000 {
        let (node, damage) = strategy.new_tree(&mut runner).expect("generates").current();
        let mut text = String::new();
        render(&node, 0, &mut text);
        let mut text = text.trim_start_matches('\n').to_owned();
        text.push('\n');
        if let Some((at, remove, piece)) = damage {
            let mut at = at % text.len();
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + remove).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            text.replace_range(at..end, piece);
        }
        texts.push(text);
    }
    let tally = agree(&texts);
    // Both kinds of outcome must be well represented for the comparison to mean something,
    // and libyaml's stricter corners must stay corners.
    let n = texts.len();
    assert!(tally.they_refused > n / 20, "too few refusals for a test: {tally:?}");
    assert!(tally.read > n / 4, "too few documents read for a test: {tally:?}");
    assert!(tally.libyaml_stricter.len() < n / 200, "libyaml refuses too much: {tally:#?}");
    eprintln!(
        "{n} texts: {} read alike, {} refused by both, {} refused on purpose, {} by libyaml's \
         stricter syntax",
        tally.read,
        tally.they_refused,
        tally.we_refused_on_purpose,
        tally.libyaml_stricter.len()
    );
}
