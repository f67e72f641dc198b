//! Property tests: the array path of each mask equals a scalar reference,
//! for arbitrary Unicode and every string type; keyed masks are
//! deterministic, type-separated and (ENCRYPT) reversible.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Int64Array, LargeStringArray, StringArray,
    StringViewArray,
};
use datafusion::arrow::datatypes::{Field, Float64Type, Int64Type};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF};
use proptest::prelude::*;
use veil_udfs::{decrypt_token, mask_udf, KeyHandle, MaskKey, MaskSpec};

fn key(id: &str, byte: u8) -> MaskKey {
    MaskKey::new(
        KeyHandle {
            id: id.into(),
            version: 1,
        },
        [byte; 32],
    )
}

fn invoke(udf: &ScalarUDF, input: ArrayRef) -> ArrayRef {
    let ret = udf.return_type(&[input.data_type().clone()]).unwrap();
    let args = ScalarFunctionArgs {
        arg_fields: vec![Arc::new(Field::new("c", input.data_type().clone(), true))],
        number_rows: input.len(),
        args: vec![ColumnarValue::Array(input)],
        return_field: Arc::new(Field::new("m", ret, true)),
        config_options: Arc::new(ConfigOptions::default()),
    };
    match udf.invoke_with_args(args).unwrap() {
        ColumnarValue::Array(a) => a,
        ColumnarValue::Scalar(s) => s.to_array().unwrap(),
    }
}

/// The values of any string-typed array.
fn texts(a: &ArrayRef) -> Vec<Option<String>> {
    let a =
        datafusion::arrow::compute::cast(a, &datafusion::arrow::datatypes::DataType::Utf8).unwrap();
    a.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

/// The same values as Utf8, LargeUtf8 and Utf8View.
fn all_string_types(values: &[Option<String>]) -> Vec<ArrayRef> {
    vec![
        Arc::new(StringArray::from(values.to_vec())),
        Arc::new(LargeStringArray::from(values.to_vec())),
        Arc::new(StringViewArray::from(
            values.iter().map(|v| v.as_deref()).collect::<Vec<_>>(),
        )),
    ]
}

fn show_last_ref(s: &str, n: usize) -> String {
    let len = s.chars().count();
    s.chars()
        .enumerate()
        .map(|(i, c)| if i + n >= len { c } else { '*' })
        .collect()
}

fn show_first_ref(s: &str, n: usize) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| if i < n { c } else { '*' })
        .collect()
}

/// Rows drawn from a pool of up to 24 values: long enough, and with few
/// enough distinct values, to take the once-per-distinct-value path as well
/// as the per-row one.
fn string_rows() -> impl Strategy<Value = Vec<Option<String>>> {
    prop::collection::vec(prop::option::of(".{0,20}"), 1..24)
        .prop_flat_map(|pool| prop::collection::vec(prop::sample::select(pool), 0..200))
}

proptest! {
    #[test]
    fn show_first_regex_and_constant_match_references(
        values in string_rows(),
        n in 0usize..6,
    ) {
        let first = mask_udf(MaskSpec::ShowFirst(n)).unwrap();
        let regex = mask_udf(MaskSpec::Regex { pattern: "[0-9a-e]".into(), replacement: "#".into() }).unwrap();
        let constant = mask_udf(MaskSpec::Constant("***".into())).unwrap();
        let re = regex::Regex::new("[0-9a-e]").unwrap();
        let expect_first: Vec<Option<String>> = values.iter().map(|v| v.as_deref().map(|s| show_first_ref(s, n))).collect();
        let expect_regex: Vec<Option<String>> = values.iter().map(|v| v.as_deref().map(|s| re.replace_all(s, "#").into_owned())).collect();
        let expect_const: Vec<Option<String>> = values.iter().map(|v| v.as_ref().map(|_| "***".to_string())).collect();
        for input in all_string_types(&values) {
            prop_assert_eq!(texts(&invoke(&first, Arc::clone(&input))), expect_first.clone());
            prop_assert_eq!(texts(&invoke(&regex, Arc::clone(&input))), expect_regex.clone());
            prop_assert_eq!(texts(&invoke(&constant, input)), expect_const.clone());
        }
    }

    #[test]
    fn date_trunc_matches_chrono(days in prop::collection::vec(prop::option::of(-100_000i32..100_000), 0..40)) {
        use chrono::{Datelike, NaiveDate};
        let udf = mask_udf(MaskSpec::DateTrunc(veil_udfs::TruncUnit::Month)).unwrap();
        let out = invoke(&udf, Arc::new(datafusion::arrow::array::Date32Array::from(days.clone())));
        let out = out.as_primitive::<datafusion::arrow::datatypes::Date32Type>();
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        for (i, d) in days.iter().enumerate() {
            match d {
                None => prop_assert!(out.is_null(i)),
                Some(d) => {
                    let date = epoch + chrono::Duration::days(*d as i64);
                    let first = NaiveDate::from_ymd_opt(date.year(), date.month(), 1).unwrap();
                    prop_assert_eq!(out.value(i) as i64, (first - epoch).num_days());
                }
            }
        }
    }

    #[test]
    fn show_last_matches_reference(values in string_rows(), n in 0usize..6) {
        let udf = mask_udf(MaskSpec::ShowLast(n)).unwrap();
        let expected: Vec<Option<String>> = values.iter().map(|v| v.as_deref().map(|s| show_last_ref(s, n))).collect();
        for input in all_string_types(&values) {
            prop_assert_eq!(texts(&invoke(&udf, input)), expected.clone());
        }
    }

    #[test]
    fn hash_is_deterministic_and_string_type_independent(values in string_rows()) {
        let udf = mask_udf(MaskSpec::Hash(key("k", 1))).unwrap();
        let outs: Vec<Vec<Option<String>>> = all_string_types(&values).into_iter().map(|a| texts(&invoke(&udf, a))).collect();
        prop_assert_eq!(&outs[0], &outs[1]);
        prop_assert_eq!(&outs[0], &outs[2]);
        for (v, h) in values.iter().zip(&outs[0]) {
            prop_assert_eq!(v.is_none(), h.is_none(), "NULL stays NULL");
            if let Some(h) = h {
                prop_assert_eq!(h.len(), 32);
                prop_assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
            }
        }
        // Each row's token is the token of that value masked on its own.
        for (v, h) in values.iter().zip(&outs[0]).take(30) {
            let alone = texts(&invoke(&udf, Arc::new(StringArray::from(vec![v.clone()]))));
            prop_assert_eq!(&alone[0], h);
        }
        // Another key gives other tokens.
        let other = mask_udf(MaskSpec::Hash(key("k2", 2))).unwrap();
        let o = texts(&invoke(&other, Arc::new(StringArray::from(values.clone()))));
        for (a, b) in outs[0].iter().zip(&o) {
            if a.is_some() { prop_assert_ne!(a, b); }
        }
    }

    #[test]
    fn encrypt_round_trips_and_wrong_key_fails(values in string_rows()) {
        let k = key("k", 3);
        let udf = mask_udf(MaskSpec::Encrypt(k.clone())).unwrap();
        let tokens = texts(&invoke(&udf, Arc::new(StringArray::from(values.clone()))));
        let again = texts(&invoke(&udf, Arc::new(StringArray::from(values.clone()))));
        prop_assert_eq!(&tokens, &again, "deterministic");
        for (v, t) in values.iter().zip(&tokens).take(40) {
            let (Some(v), Some(t)) = (v, t) else {
                prop_assert!(v.is_none() && t.is_none(), "NULL stays NULL");
                continue;
            };
            let plain = decrypt_token(&k, t).unwrap();
            prop_assert_eq!(&plain[..1], b"s");
            prop_assert_eq!(&plain[1..], v.as_bytes());
            prop_assert!(decrypt_token(&key("k", 4), t).is_err());
        }
    }

    #[test]
    fn integer_hash_per_row_equals_hash_alone(
        pool in prop::collection::vec(prop::option::of(any::<i64>()), 1..24),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
    ) {
        let udf = mask_udf(MaskSpec::Hash(key("k", 1))).unwrap();
        let values: Vec<Option<i64>> = picks.iter().map(|i| *i.get(&pool)).collect();
        let out = invoke(&udf, Arc::new(Int64Array::from(values.clone())));
        // Tokens remembered across batches equal a fresh instance's.
        let again = invoke(&udf, Arc::new(Int64Array::from(values.clone())));
        let fresh = invoke(&mask_udf(MaskSpec::Hash(key("k", 1))).unwrap(), Arc::new(Int64Array::from(values.clone())));
        prop_assert_eq!(out.as_ref(), again.as_ref());
        prop_assert_eq!(out.as_ref(), fresh.as_ref());
        let out = out.as_primitive::<Int64Type>();
        for (i, v) in values.iter().enumerate().take(30) {
            let alone = invoke(&udf, Arc::new(Int64Array::from(vec![*v])));
            let alone = alone.as_primitive::<Int64Type>();
            prop_assert_eq!(out.is_null(i), v.is_none());
            if v.is_some() {
                prop_assert_eq!(out.value(i), alone.value(0));
            }
        }
    }

    #[test]
    // Key versions are separate key bytes (HKDF info carries the version;
    // engine/src/keys.rs), so two versions are two keys here.
    fn tokens_of_two_keys_never_intersect(
        values in prop::collection::btree_set("[a-z0-9]{0,12}", 1..60),
        ints in prop::collection::btree_set(any::<i64>(), 1..60),
        a in any::<[u8; 32]>(),
        b in any::<[u8; 32]>(),
    ) {
        prop_assume!(a != b);
        let k = |bytes: [u8; 32], version: u32| MaskKey::new(KeyHandle { id: "project:x".into(), version }, bytes);
        let keys = [k(a, 1), k(b, 2)];
        let strings: Vec<String> = values.into_iter().collect();
        let ints: Vec<i64> = ints.into_iter().collect();
        for method in [MaskSpec::Hash as fn(MaskKey) -> MaskSpec, MaskSpec::Encrypt] {
            let mut seen: Vec<std::collections::BTreeSet<String>> = vec![];
            for key in &keys {
                let udf = mask_udf(method(key.clone())).unwrap();
                let s = texts(&invoke(&udf, Arc::new(StringArray::from(strings.clone()))));
                let again = texts(&invoke(&udf, Arc::new(StringArray::from(strings.clone()))));
                prop_assert_eq!(&s, &again, "deterministic per key and version");
                let i = invoke(&udf, Arc::new(Int64Array::from(ints.clone())));
                let i = datafusion::arrow::compute::cast(&i, &datafusion::arrow::datatypes::DataType::Utf8).unwrap();
                let set: std::collections::BTreeSet<String> = s.into_iter().chain(texts(&i)).flatten().collect();
                prop_assert_eq!(set.len(), strings.len() + ints.len(), "no collision inside one key");
                for other in &seen {
                    prop_assert!(set.is_disjoint(other), "two keys share a token");
                }
                seen.push(set);
            }
        }
    }

    #[test]
    fn equal_plaintexts_of_different_types_never_collide(n in -1_000_000i32..1_000_000) {
        use datafusion::arrow::array::{Date32Array, Int32Array};
        for method in [MaskSpec::Hash as fn(MaskKey) -> MaskSpec, MaskSpec::Encrypt] {
            let udf = mask_udf(method(key("k", 9))).unwrap();
            let as_text = |a: ArrayRef| {
                let out = invoke(&udf, a);
                let out = datafusion::arrow::compute::cast(&out, &datafusion::arrow::datatypes::DataType::Utf8).unwrap();
                texts(&out)[0].clone()
            };
            let date = Date32Array::from(vec![n]);
            let date_text = datafusion::arrow::util::display::ArrayFormatter::try_new(&date, &Default::default())
                .unwrap().value(0).to_string();
            let tokens = [
                as_text(Arc::new(Int32Array::from(vec![n]))),
                as_text(Arc::new(StringArray::from(vec![n.to_string()]))),
                as_text(Arc::new(date)),
                as_text(Arc::new(StringArray::from(vec![date_text]))),
            ];
            for i in 0..tokens.len() {
                for j in i + 1..tokens.len() {
                    prop_assert_ne!(&tokens[i], &tokens[j], "types {} and {} collide", i, j);
                }
            }
        }
    }

    #[test]
    fn round_is_floor_of_width(values in prop::collection::vec(prop::option::of(-1_000_000i64..1_000_000), 0..50), width in 1i64..5000) {
        let udf = mask_udf(MaskSpec::Round(width as f64)).unwrap();
        let out = invoke(&udf, Arc::new(Int64Array::from(values.clone())));
        let out = out.as_primitive::<Int64Type>();
        for (i, v) in values.iter().enumerate() {
            match v {
                None => prop_assert!(out.is_null(i)),
                Some(v) => prop_assert_eq!(out.value(i), v.div_euclid(width) * width),
            }
        }
    }

    /// Decimals of up to 18 digits take a path of their own (`round.rs`);
    /// both paths give floor(x / width) * width of the decimal's f64 value,
    /// NULLs kept.
    #[test]
    fn round_of_decimals_is_floor_of_width_on_both_paths(
        values in prop::collection::vec(prop::option::of(-999_999_999_999_999i64..999_999_999_999_999), 0..50),
        width in prop::sample::select(vec![0.5, 1.0, 7.0, 100.0, 2500.0]),
        scale in 0i8..6,
    ) {
        let udf = mask_udf(MaskSpec::Round(width)).unwrap();
        for precision in [15u8, 18, 38] {
            let input = Decimal128Array::from(values.iter().map(|v| v.map(i128::from)).collect::<Vec<_>>())
                .with_precision_and_scale(precision, scale)
                .unwrap();
            let out = invoke(&udf, Arc::new(input));
            let out = out.as_primitive::<Float64Type>();
            for (i, v) in values.iter().enumerate() {
                match v {
                    None => prop_assert!(out.is_null(i)),
                    Some(v) => {
                        let x = *v as f64 / 10f64.powi(i32::from(scale));
                        prop_assert_eq!(out.value(i), (x / width).floor() * width, "precision {}", precision);
                    }
                }
            }
        }
    }
}

#[test]
fn integer_and_string_tokens_differ() {
    let udf = mask_udf(MaskSpec::Hash(key("k", 1))).unwrap();
    let i = invoke(&udf, Arc::new(Int64Array::from(vec![42])));
    let s = invoke(&udf, Arc::new(StringArray::from(vec!["42"])));
    assert_eq!(
        i.data_type(),
        &datafusion::arrow::datatypes::DataType::Int64
    );
    let i32_in = invoke(
        &udf,
        Arc::new(datafusion::arrow::array::Int32Array::from(vec![42])),
    );
    assert_eq!(
        i.as_ref(),
        i32_in.as_ref(),
        "integer widths share one family"
    );
    // The integer token's bits are not the string token's first bits.
    let s_hex = &texts(&s)[0].clone().unwrap()[..15];
    let i_hex = format!("{:015x}", i.as_primitive::<Int64Type>().value(0) << 1);
    assert_ne!(s_hex, &i_hex[..15]);
    // Debug output shows the handle, never key bytes.
    let dbg = format!("{:?}", key("k", 0xab));
    assert!(dbg.contains("k#v1") && !dbg.contains("171") && !dbg.contains("ab, ab"));
}

#[test]
fn low_cardinality_cache_gives_the_same_tokens() {
    let udf = mask_udf(MaskSpec::Hash(key("k", 1))).unwrap();
    // Repeating values (cache on) and unique values (cache turns off).
    let repeating: Vec<Option<String>> = (0..2000)
        .map(|i| Some(["EU", "US", "APAC"][i % 3].to_string()))
        .collect();
    let unique: Vec<Option<String>> = (0..2000).map(|i| Some(format!("v{i}"))).collect();
    for values in [repeating, unique] {
        let batch = texts(&invoke(&udf, Arc::new(StringArray::from(values.clone()))));
        for (i, v) in values.iter().enumerate().step_by(97) {
            let one = texts(&invoke(&udf, Arc::new(StringArray::from(vec![v.clone()]))));
            assert_eq!(batch[i], one[0]);
        }
    }
}

#[test]
fn integer_tokens_are_the_same_with_the_cache_on_or_given_up() {
    // Distinct keys: the cache gives up after its probe; repeated keys: it
    // stays on. Either way every batch equals a fresh instance's tokens.
    for repeated in [false, true] {
        let udf = mask_udf(MaskSpec::Hash(key("k", 5))).unwrap();
        for b in 0..24i64 {
            let base = if repeated { 0 } else { b * 8192 };
            let batch: ArrayRef = Arc::new(Int64Array::from_iter_values(
                (base..base + 8192).map(|i| i * 7919),
            ));
            let fresh = mask_udf(MaskSpec::Hash(key("k", 5))).unwrap();
            assert_eq!(
                invoke(&udf, Arc::clone(&batch)).as_ref(),
                invoke(&fresh, batch).as_ref(),
                "batch {b}, repeated {repeated}"
            );
        }
    }
}

#[test]
fn differently_keyed_masks_are_never_equal_for_datafusion() {
    use datafusion::logical_expr::expr::ScalarFunction;
    use datafusion::logical_expr::{col, Expr};
    use std::hash::{DefaultHasher, Hash, Hasher};
    let keyed = |id: &str, version: u32, byte: u8| {
        mask_udf(MaskSpec::Hash(MaskKey::new(
            KeyHandle {
                id: id.into(),
                version,
            },
            [byte; 32],
        )))
        .unwrap()
    };
    let expr = |udf: ScalarUDF| {
        Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(udf), vec![col("x")]))
    };
    let hash_of = |e: &Expr| {
        let mut h = DefaultHasher::new();
        e.hash(&mut h);
        h.finish()
    };
    let a = expr(keyed("col:s.t.a", 1, 1));
    assert_eq!(a, expr(keyed("col:s.t.a", 1, 1)), "same handle, same mask");
    assert_eq!(hash_of(&a), hash_of(&expr(keyed("col:s.t.a", 1, 1))));
    for other in [
        keyed("col:s.t.b", 1, 2),
        keyed("col:s.t.a", 2, 3),
        keyed("project:p1", 1, 4),
    ] {
        let o = expr(other);
        assert_ne!(a, o, "{o} must not merge with {a}");
        assert_ne!(a.schema_name().to_string(), o.schema_name().to_string());
    }
}

/// The engine joins on raw keys only under masks this names injective
/// (engine/src/governance/raw_keys.rs): keyed HASH and ENCRYPT, and no
/// mask that maps two values to one output.
#[test]
fn only_keyed_masks_are_injective() {
    use veil_udfs::is_injective_mask;
    for spec in [MaskSpec::Hash(key("k", 1)), MaskSpec::Encrypt(key("k", 1))] {
        assert!(is_injective_mask(&mask_udf(spec).unwrap()));
    }
    for spec in [
        MaskSpec::Null,
        MaskSpec::Constant("x".into()),
        MaskSpec::Regex {
            pattern: "[0-9]".into(),
            replacement: "#".into(),
        },
        MaskSpec::ShowFirst(2),
        MaskSpec::ShowLast(4),
        MaskSpec::Round(10.0),
        MaskSpec::DateTrunc("month".parse().unwrap()),
    ] {
        let udf = mask_udf(spec).unwrap();
        assert!(!is_injective_mask(&udf), "{} is not injective", udf.name());
    }
}

/// The engine evaluates a filter's conjuncts calling these masks after its
/// other conjuncts (engine/src/governance/costly_conjuncts.rs): the keyed,
/// regex and character-walking masks, not the constant-time ones.
#[test]
fn costly_masks_are_the_keyed_regex_and_show_masks() {
    use veil_udfs::is_costly_mask;
    let costly = [
        MaskSpec::Hash(key("k", 1)),
        MaskSpec::Encrypt(key("k", 1)),
        MaskSpec::Regex {
            pattern: "[0-9]".into(),
            replacement: "#".into(),
        },
        MaskSpec::ShowFirst(2),
        MaskSpec::ShowLast(4),
    ];
    for spec in costly {
        let udf = mask_udf(spec).unwrap();
        assert!(is_costly_mask(&udf), "{} is costly", udf.name());
    }
    for spec in [
        MaskSpec::Null,
        MaskSpec::Constant("x".into()),
        MaskSpec::Round(10.0),
        MaskSpec::DateTrunc("month".parse().unwrap()),
    ] {
        let udf = mask_udf(spec).unwrap();
        assert!(!is_costly_mask(&udf), "{} is not costly", udf.name());
    }
    let upper = datafusion::functions::string::upper();
    assert!(!is_costly_mask(&upper), "only masks are named");
}

/// The premise of joining raw keys (engine/src/governance/raw_keys.rs
/// `joinable`): for every non-integer, non-string type the engine joins raw,
/// values one unit apart at the finest precision get different tokens, so
/// equal tokens mean equal values.
#[test]
fn adjacent_values_of_raw_joinable_types_get_distinct_tokens() {
    use datafusion::arrow::array::{
        BooleanArray, Date32Array, Decimal128Array, Decimal256Array, Time32MillisecondArray,
        Time64NanosecondArray, TimestampMicrosecondArray, TimestampNanosecondArray,
    };
    use datafusion::arrow::datatypes::i256;
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(BooleanArray::from(vec![false, true])),
        Arc::new(Date32Array::from(vec![19_000, 19_001])),
        Arc::new(Time32MillisecondArray::from(vec![1, 2])),
        Arc::new(Time64NanosecondArray::from(vec![1, 2])),
        Arc::new(TimestampNanosecondArray::from(vec![1, 2])),
        Arc::new(TimestampMicrosecondArray::from(vec![1, 2]).with_timezone("+05:30")),
        Arc::new(
            Decimal128Array::from(vec![1, 2])
                .with_precision_and_scale(38, 10)
                .unwrap(),
        ),
        Arc::new(
            Decimal256Array::from(vec![i256::from(1), i256::from(2)])
                .with_precision_and_scale(76, 20)
                .unwrap(),
        ),
    ];
    for method in [MaskSpec::Hash as fn(MaskKey) -> MaskSpec, MaskSpec::Encrypt] {
        let udf = mask_udf(method(key("k", 3))).unwrap();
        for a in &arrays {
            let out = invoke(&udf, Arc::clone(a));
            let out = datafusion::arrow::compute::cast(
                &out,
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let t = texts(&out);
            assert_ne!(
                t[0],
                t[1],
                "{}: adjacent values share a token",
                a.data_type()
            );
        }
    }
}
