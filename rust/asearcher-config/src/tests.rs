use super::*;
use serde::Deserialize;
use serde_json::json;

/// A two-level config like the real ones: defaults, unknown keys refused, one path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct Root {
    /// Where outputs go.
    out_dir: PathBuf,
    /// The inner part.
    inner: Inner,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct Inner {
    /// Lower clip.
    eps_clip: f64,
    steps: Option<u64>,
    names: Vec<String>,
}

impl Default for Root {
    fn default() -> Self {
        Root {
            out_dir: PathBuf::from("runs/x"),
            inner: Inner::default(),
        }
    }
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            eps_clip: 0.2,
            steps: None,
            names: vec!["a".into()],
        }
    }
}

impl Document for Root {
    fn resolve_paths(&mut self, base: &Path) {
        if self.out_dir.is_relative() {
            self.out_dir = base.join(&self.out_dir);
        }
    }
}

fn field_of(e: ConfigError) -> (String, String) {
    match e {
        ConfigError::Invalid { field, msg } => (field, msg),
        other => panic!("not an invalid-setting error: {other}"),
    }
}

#[test]
fn override_values_are_read_as_yaml() {
    let cases = [
        ("a.b=0.3", json!(0.3)),
        ("a.b=1e-6", json!(1e-6)),
        ("a.b=4", json!(4)),
        ("a.b=true", json!(true)),
        ("a.b=null", Value::Null),
        ("a.b=[1, 2]", json!([1, 2])),
        ("a.b={x: 1}", json!({"x": 1})),
        ("a.b=runs/my run", json!("runs/my run")),
        ("a.b='0.3'", json!("0.3")),
        ("a.b=", json!("")),
        ("a.b=x=y", json!("x=y")),
    ];
    for (text, want) in cases {
        let o = Override::parse(text).unwrap();
        assert_eq!(o.key, ["a", "b"], "{text}");
        assert_eq!(o.value, want, "{text}");
    }
}

#[test]
fn malformed_overrides_name_what_is_wrong() {
    let (field, msg) = field_of(Override::parse("learner.ppo.eps_clip").unwrap_err());
    assert_eq!(field, "learner.ppo.eps_clip");
    assert!(msg.contains("no `=`"), "{msg}");
    let (field, _) = field_of(Override::parse("learner..eps=1").unwrap_err());
    assert_eq!(field, "learner..eps");
    let (field, msg) = field_of(Override::parse("a.b=[1, 2").unwrap_err());
    assert_eq!(field, "a.b");
    assert!(msg.contains("[1, 2"), "{msg}");
}

#[test]
fn overrides_make_tables_and_refuse_to_go_through_a_value() {
    let mut doc = json!({"inner": {"eps_clip": 0.1}});
    apply_overrides(
        &mut doc,
        &["inner.steps=3", "new.deep.key=x", "inner.eps_clip=0.4"],
    )
    .unwrap();
    assert_eq!(doc["inner"], json!({"eps_clip": 0.4, "steps": 3}));
    assert_eq!(doc["new"]["deep"]["key"], json!("x"));
    let (field, msg) = field_of(apply_overrides(&mut doc, &["inner.eps_clip.x=1"]).unwrap_err());
    assert_eq!(field, "inner.eps_clip");
    assert!(msg.contains("inner.eps_clip.x"), "{msg}");
}

#[test]
fn unknown_keys_are_named_in_full_with_a_suggestion() {
    let (field, msg) =
        field_of(deserialize_named::<Root>(json!({"inner": {"eps_clipp": 0.3}})).unwrap_err());
    assert_eq!(field, "inner.eps_clipp");
    assert!(msg.contains("did you mean `eps_clip`"), "{msg}");
    let (field, msg) = field_of(deserialize_named::<Root>(json!({"zzz": 1})).unwrap_err());
    assert_eq!(field, "zzz");
    assert!(!msg.contains("did you mean"), "{msg}");
    assert!(msg.contains("out_dir") && msg.contains("inner"), "{msg}");
    let (field, _) =
        field_of(deserialize_under::<Inner>(json!({"stepz": 1}), "learner").unwrap_err());
    assert_eq!(field, "learner.stepz");
}

#[test]
fn bad_values_name_their_key() {
    let (field, msg) =
        field_of(from_value::<Root, _>(json!({}), &["inner.eps_clip=abc"]).unwrap_err());
    assert_eq!(field, "inner.eps_clip");
    assert!(msg.contains("abc"), "{msg}");
    let (field, _) = field_of(from_value::<Root, _>(json!({}), &["inner.names=3"]).unwrap_err());
    assert_eq!(field, "inner.names");
}

#[test]
fn files_of_each_format_load_with_paths_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("c.toml", "out_dir = \"out\"\n[inner]\neps_clip = 0.1\n"),
        ("c.yaml", "out_dir: out\ninner:\n  eps_clip: 0.1\n"),
        (
            "c.json",
            r#"{"out_dir": "out", "inner": {"eps_clip": 0.1}}"#,
        ),
    ];
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let cfg: Root = load(&path, &["inner.steps=7"]).unwrap();
        assert_eq!(cfg.out_dir, dir.path().join("out"), "{name}");
        assert_eq!(cfg.inner.eps_clip, 0.1, "{name}");
        assert_eq!(cfg.inner.steps, Some(7), "{name}");
        assert_eq!(cfg.inner.names, ["a"], "{name}");
        // An override's path stays as given (relative to the working directory).
        let cfg: Root = load(&path, &["out_dir=elsewhere"]).unwrap();
        assert_eq!(cfg.out_dir, PathBuf::from("elsewhere"));
    }
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    assert_eq!(
        load::<Root, &str>(&empty, &[]).unwrap().inner,
        Inner::default()
    );
}

#[test]
fn unreadable_files_say_which_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = read_document(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err}");
    assert!(err.to_string().contains("nope.toml"), "{err}");
    for (name, text, want) in [
        ("bad.toml", "x = = 1", "bad.toml"),
        ("bad.yaml", "a: [1", "bad.yaml"),
        ("list.json", "[1, 2]", "table of settings"),
        ("c.ini", "x=1", ".toml, .yaml"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let err = read_document(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{name}: {err}");
        assert!(err.to_string().contains(want), "{name}: {err}");
    }
}

#[test]
fn schemas_carry_docs_types_and_defaults() {
    let schema = schema_of::<Root>();
    let inner = &schema["$defs"]["Inner"]["properties"];
    assert_eq!(inner["eps_clip"]["description"], json!("Lower clip."));
    assert_eq!(inner["eps_clip"]["type"], json!("number"));
    assert_eq!(schema["properties"]["out_dir"]["default"], json!("runs/x"));
    assert_eq!(
        schema["$defs"]["Inner"]["additionalProperties"],
        json!(false)
    );
}

/// A root whose `inner.steps` moved to `out_steps`.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct Renamed {
    /// The new home of the setting.
    out_steps: u64,
    /// The part that lost it.
    inner: Inner,
}

impl Document for Renamed {
    const MOVED: &'static [(&'static str, &'static str)] = &[("inner.steps", "`out_steps`")];
}

#[test]
fn moved_keys_name_their_new_place() {
    let (field, msg) =
        field_of(from_value::<Renamed, _>(json!({}), &["inner.steps=3"]).unwrap_err());
    assert_eq!(field, "inner.steps");
    assert!(msg.contains("use `out_steps`"), "{msg}");
    let (field, _) =
        field_of(deserialize_document::<Renamed>(json!({"inner": {"steps": 1}}), "x").unwrap_err());
    assert_eq!(field, "x.inner.steps");
    let ok: Renamed = from_value(json!({"out_steps": 2}), &["inner.eps_clip=0.5"]).unwrap();
    assert_eq!((ok.out_steps, ok.inner.eps_clip), (2, 0.5));
}
