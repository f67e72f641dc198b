//! Writes the small sample Parquet under testdata/ (deterministic).
//!
//! `cargo run -p veil-engine --example gen_testdata -- testdata`

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::parquet::arrow::ArrowWriter;

/// A tiny deterministic generator (SplitMix64), so the files never change.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const FIRST: &[&str] = &[
    "Ada", "Ben", "Chloé", "Dmitri", "Eve", "Farah", "Goran", "Hana", "Ivan", "Jun", "Kofi",
    "Lena", "Mateo", "Nora", "Omar", "Priya",
];
const LAST: &[&str] = &[
    "Okafor", "Schmidt", "Tanaka", "García", "Novak", "Haddad", "Larsen", "Rossi", "Kowalski",
    "Nguyen", "Silva", "Dubois",
];
const DEPTS: &[&str] = &["engineering", "sales", "hr", "finance", "support"];
const REGIONS: &[&str] = &["EU", "US", "APAC"];
const MERCHANTS: &[&str] = &[
    "Acme Grocery",
    "Blue Air",
    "City Fuel",
    "Delta Books",
    "Echo Hotels",
    "Fjord Cafe",
];

fn write(dir: &Path, rel: &str, batch: RecordBatch) {
    let path = dir.join(rel);
    let file = File::create(&path).expect("create file");
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    println!("wrote {} ({} rows)", path.display(), batch.num_rows());
}

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "testdata".into());
    let dir = Path::new(&out);
    let mut rng = Rng(42);

    let n = 1000;
    let mut names = vec![];
    let mut emails = vec![];
    let mut ssns = vec![];
    let mut depts = vec![];
    let mut regions = vec![];
    let mut salaries = vec![];
    let mut hired = vec![];
    for i in 0..n {
        let (f, l) = (rng.pick(FIRST), rng.pick(LAST));
        names.push(format!("{f} {l}"));
        emails.push(format!(
            "{}.{}{}@example.com",
            f.to_lowercase(),
            l.to_lowercase(),
            i
        ));
        ssns.push(format!(
            "{:03}-{:02}-{:04}",
            100 + rng.below(800),
            10 + rng.below(89),
            rng.below(10000)
        ));
        depts.push(rng.pick(DEPTS));
        regions.push(rng.pick(REGIONS));
        salaries.push(40_000 + (rng.below(120) as i64) * 1_000);
        hired.push(14_000 + rng.below(6_000) as i32);
    }
    let employees = RecordBatch::try_from_iter(vec![
        (
            "employee_id",
            Arc::new(Int64Array::from_iter_values(1..=n as i64)) as ArrayRef,
        ),
        ("name", Arc::new(StringArray::from(names))),
        ("email", Arc::new(StringArray::from(emails))),
        ("ssn", Arc::new(StringArray::from(ssns))),
        ("department", Arc::new(StringArray::from(depts))),
        ("region", Arc::new(StringArray::from(regions.clone()))),
        ("salary", Arc::new(Int64Array::from(salaries))),
        ("hire_date", Arc::new(Date32Array::from(hired))),
    ])
    .expect("employees");
    write(dir, "hr/employees.parquet", employees);

    let cards = 1000;
    let mut numbers = vec![];
    let mut holders = vec![];
    let mut card_regions = vec![];
    for _ in 0..cards {
        numbers.push(format!("4{:015}", rng.next() % 1_000_000_000_000_000));
        let holder = 1 + rng.below(n as u64) as i64;
        holders.push(holder);
        card_regions.push(regions[(holder - 1) as usize]);
    }
    let cards_batch = RecordBatch::try_from_iter(vec![
        (
            "card_id",
            Arc::new(Int64Array::from_iter_values(1..=cards as i64)) as ArrayRef,
        ),
        ("employee_id", Arc::new(Int64Array::from(holders))),
        ("card_number", Arc::new(StringArray::from(numbers))),
        ("region", Arc::new(StringArray::from(card_regions.clone()))),
    ])
    .expect("cards");
    write(dir, "payments/cards.parquet", cards_batch);

    let txns = 3000;
    let mut card_ids = vec![];
    let mut amounts = vec![];
    let mut txn_regions = vec![];
    let mut merchants = vec![];
    let mut ts = vec![];
    for _ in 0..txns {
        let card = 1 + rng.below(cards as u64) as i64;
        card_ids.push(card);
        amounts.push((rng.below(50_000) as f64) / 100.0);
        txn_regions.push(card_regions[(card - 1) as usize]);
        merchants.push(rng.pick(MERCHANTS));
        ts.push(1_700_000_000_000_000i64 + (rng.below(31_536_000) as i64) * 1_000_000);
    }
    let txn_batch = RecordBatch::try_from_iter(vec![
        (
            "txn_id",
            Arc::new(Int64Array::from_iter_values(1..=txns as i64)) as ArrayRef,
        ),
        ("card_id", Arc::new(Int64Array::from(card_ids))),
        ("amount", Arc::new(Float64Array::from(amounts))),
        ("region", Arc::new(StringArray::from(txn_regions))),
        ("merchant", Arc::new(StringArray::from(merchants))),
        ("ts", Arc::new(TimestampMicrosecondArray::from(ts))),
    ])
    .expect("transactions");
    write(dir, "sales/transactions.parquet", txn_batch);
}
