-- The governance profile of `veil bench tpch` (README, "Benchmarks").
-- `{data}` is replaced by the directory `veil bench generate` wrote.
-- Every policy exempts group tpch_unrestricted, so bench_unrestricted runs
-- the whole machinery (analysis, barriers, policy evaluation) and sees raw
-- data, while bench_restricted gets every mask and row filter.

CREATE USER bench_unrestricted PASSWORD 'bench-pw' GROUPS ('tpch_unrestricted');
-- Nations 0-12 of 25 (TPC-H nation keys).
CREATE USER bench_restricted PASSWORD 'bench-pw' GROUPS ('analysts') ATTRIBUTES (nation = ('0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11', '12'));

CREATE DATA SOURCE tpch.region FROM PARQUET '{data}/region';
CREATE DATA SOURCE tpch.nation FROM PARQUET '{data}/nation';
CREATE DATA SOURCE tpch.supplier FROM PARQUET '{data}/supplier';
CREATE DATA SOURCE tpch.customer FROM PARQUET '{data}/customer';
CREATE DATA SOURCE tpch.part FROM PARQUET '{data}/part';
CREATE DATA SOURCE tpch.partsupp FROM PARQUET '{data}/partsupp';
CREATE DATA SOURCE tpch.orders FROM PARQUET '{data}/orders';
CREATE DATA SOURCE tpch.lineitem FROM PARQUET '{data}/lineitem';
ALTER DATA SOURCE tpch.region SET SUBSCRIPTION ANYONE;
ALTER DATA SOURCE tpch.nation SET SUBSCRIPTION ANYONE;
ALTER DATA SOURCE tpch.supplier SET SUBSCRIPTION ANYONE;
ALTER DATA SOURCE tpch.customer SET SUBSCRIPTION ANYONE;
ALTER DATA SOURCE tpch.part SET SUBSCRIPTION ANYONE;
ALTER DATA SOURCE tpch.partsupp SET SUBSCRIPTION ANYONE;
ALTER DATA SOURCE tpch.orders SET SUBSCRIPTION ANYONE;
ALTER DATA SOURCE tpch.lineitem SET SUBSCRIPTION ANYONE;

ALTER DATA SOURCE tpch.customer TAG COLUMN c_name WITH ('TPCH.PII.Name');
ALTER DATA SOURCE tpch.customer TAG COLUMN c_address WITH ('TPCH.PII.Address');
ALTER DATA SOURCE tpch.customer TAG COLUMN c_phone WITH ('TPCH.PII.Phone');
ALTER DATA SOURCE tpch.customer TAG COLUMN c_acctbal WITH ('TPCH.Balance');
ALTER DATA SOURCE tpch.supplier TAG COLUMN s_name WITH ('TPCH.PII.Name');
ALTER DATA SOURCE tpch.supplier TAG COLUMN s_address WITH ('TPCH.PII.Address');
ALTER DATA SOURCE tpch.supplier TAG COLUMN s_phone WITH ('TPCH.PII.Phone');
ALTER DATA SOURCE tpch.supplier TAG COLUMN s_acctbal WITH ('TPCH.Balance');

-- Names, addresses and phones are hashed.
CREATE MASKING POLICY tpch_pii_hash ON COLUMNS TAGGED 'TPCH.PII' USING HASH UNLESS has_group('tpch_unrestricted');
-- Phone-like columns show their last 4 characters where HASH does not
-- apply; TPC-H's two phone columns are hashed, so HASH wins and this policy
-- is reported as overridden on both (audit, SHOW POLICY INFO).
CREATE MASKING POLICY tpch_phone_last4 ON COLUMNS TAGGED 'TPCH.PII.Phone' USING SHOW_LAST 4 UNLESS has_group('tpch_unrestricted');
-- Account balances are rounded to hundreds.
CREATE MASKING POLICY tpch_balance_round ON COLUMNS TAGGED 'TPCH.Balance' USING ROUND 100 UNLESS has_group('tpch_unrestricted');

-- Customers and suppliers of the principal's nations only (attribute match).
CREATE ROW POLICY tpch_customer_nation ON tpch.customer USING attribute_contains('nation', c_nationkey) UNLESS has_group('tpch_unrestricted');
CREATE ROW POLICY tpch_supplier_nation ON tpch.supplier USING attribute_contains('nation', s_nationkey) UNLESS has_group('tpch_unrestricted');
-- Orders from 1993 on (TPC-H orders span 1992-01-01 to 1998-08-02).
CREATE ROW POLICY tpch_orders_recent ON tpch.orders USING o_orderdate >= DATE '1993-01-01' UNLESS has_group('tpch_unrestricted');
