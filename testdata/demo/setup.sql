-- Veil demo governance: users, sources, tags, global and local policies.
-- Run by `veil serve --demo` (as admin) or `veil apply testdata/demo/setup.sql`.
-- Paths are relative to the repository root.

CREATE USER alice PASSWORD 'alice-pw' GROUPS ('hr', 'staff') ATTRIBUTES (region = ('EU', 'US', 'APAC'), clearance = 'high');
CREATE USER bob PASSWORD 'bob-pw' GROUPS ('analysts', 'staff') ATTRIBUTES (region = 'US');
CREATE USER carol PASSWORD 'carol-pw' GROUPS ('analysts', 'staff') ATTRIBUTES (region = ('EU'));
CREATE USER dave PASSWORD 'dave-pw' GROUPS ('contractors') ATTRIBUTES (region = 'APAC');
-- The Sally-and-Bob story (README): sally sees PII and card numbers, bob does not;
-- pam approves project purposes.
CREATE USER sally PASSWORD 'sally-pw' GROUPS ('hr', 'staff') ATTRIBUTES (region = ('EU', 'US'), clearance = 'high');
CREATE USER pam PASSWORD 'pam-pw' GROUPS ('staff');
GRANT PERMISSION FETCH_POLICY_INFO TO alice;
GRANT PERMISSION CREATE_PROJECT TO sally;
GRANT PERMISSION PROJECT_MANAGEMENT TO pam;

CREATE PURPOSE 'Research' DESCRIPTION 'Studies on historical data';
CREATE PURPOSE 'Fraud Detection' PARENT 'Research' DESCRIPTION 'Finding fraudulent card use' ACKNOWLEDGEMENT 'I will use this data only for fraud detection';

CREATE DATA SOURCE hr.employees FROM PARQUET 'testdata/hr/employees.parquet';
CREATE DATA SOURCE payments.cards FROM PARQUET 'testdata/payments/cards.parquet';
CREATE DATA SOURCE sales.transactions FROM PARQUET 'testdata/sales/transactions.parquet';

ALTER DATA SOURCE hr.employees TAG COLUMN ssn WITH ('PII.SSN');
ALTER DATA SOURCE hr.employees TAG COLUMN email WITH ('PII.Email');
ALTER DATA SOURCE hr.employees TAG COLUMN name WITH ('PII.Name');
ALTER DATA SOURCE hr.employees TAG COLUMN salary WITH ('Financial');
ALTER DATA SOURCE payments.cards TAG COLUMN card_number WITH ('PCI');

ALTER DATA SOURCE hr.employees SET SUBSCRIPTION WHEN has_group('staff');
ALTER DATA SOURCE payments.cards SET SUBSCRIPTION WHEN has_group('staff');
ALTER DATA SOURCE sales.transactions SET SUBSCRIPTION ANYONE;

-- Global: PII is hashed for everyone outside HR; SSNs are NULL outside HR.
CREATE MASKING POLICY pii_hash ON COLUMNS TAGGED 'PII' USING HASH UNLESS has_group('hr');
CREATE MASKING POLICY ssn_null ON COLUMNS TAGGED 'PII.SSN' USING NULL UNLESS has_group('hr');
CREATE MASKING POLICY salary_round ON COLUMNS TAGGED 'Financial' USING ROUND 10000 UNLESS has_group('hr');
-- Local: card numbers show their last 4 digits unless high clearance.
CREATE MASKING POLICY card_last4 ON payments.cards (card_number) USING SHOW_LAST 4 UNLESS has_attribute('clearance', 'high');

-- Rows: people see their own regions only, unless in HR (employees) or acting
-- under an approved Research purpose, 'Fraud Detection' included (transactions).
CREATE ROW POLICY employees_region ON hr.employees USING attribute_contains('region', region) UNLESS has_group('hr');
CREATE ROW POLICY transactions_region ON sales.transactions USING attribute_contains('region', region) UNLESS has_purpose('Research');
