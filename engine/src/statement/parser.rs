//! Parser for governance statements, on top of sqlparser's tokenizer and
//! expression parser.

use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

use super::ast::{GovStatement, ProjectAction};
use crate::condition::parse_condition;
use crate::error::{Result, VeilError};
use crate::model::{Applicability, MaskMethod, Permission, Subscription, Target};
use crate::sql_guard::BoundedDialect;

struct P<'a> {
    p: Parser<'a>,
    sql: &'a str,
}

fn syntax(sql: &str, e: impl std::fmt::Display) -> VeilError {
    VeilError::InvalidArgument(format!("syntax error in '{}': {e}", sql.trim()))
}

impl<'a> P<'a> {
    fn err<T>(&self, e: impl std::fmt::Display) -> Result<T> {
        Err(syntax(self.sql, e))
    }

    fn pe<T>(&self, r: Result<T, ParserError>) -> Result<T> {
        r.map_err(|e| syntax(self.sql, e))
    }

    fn peek_word(&self, n: usize) -> Option<String> {
        match self.p.peek_nth_token(n).token {
            Token::Word(w) => Some(w.value.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn word(&mut self, kw: &str) -> bool {
        if self.peek_word(0).as_deref() == Some(kw) {
            self.p.next_token();
            true
        } else {
            false
        }
    }

    fn words(&mut self, kws: &[&str]) -> bool {
        if kws
            .iter()
            .enumerate()
            .all(|(i, k)| self.peek_word(i).as_deref() == Some(*k))
        {
            for _ in kws {
                self.p.next_token();
            }
            true
        } else {
            false
        }
    }

    fn expect(&mut self, kw: &str) -> Result<()> {
        if self.word(kw) {
            Ok(())
        } else {
            let found = self.p.peek_token().token;
            self.err(format!("expected {kw}, found {found}"))
        }
    }

    fn ident(&mut self) -> Result<String> {
        let r = self.p.parse_identifier();
        Ok(self.pe(r)?.value)
    }

    /// `schema.table`.
    fn source(&mut self) -> Result<String> {
        let r = self.p.parse_object_name(false);
        let name = self.pe(r)?;
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(|i| i.value.clone()))
            .collect();
        match parts.as_slice() {
            [s, t] => Ok(format!("{s}.{t}")),
            [c, s, t] if c.eq_ignore_ascii_case("veil") => Ok(format!("{s}.{t}")),
            _ => self.err(format!("data source name '{name}' must be schema.table")),
        }
    }

    /// A quoted name, or a bare identifier (purpose names).
    fn name(&mut self) -> Result<String> {
        match self.p.peek_token().token {
            Token::SingleQuotedString(_) => self.string(),
            _ => self.ident(),
        }
    }

    /// A project name (case-insensitive, stored lowercase).
    fn project(&mut self) -> Result<String> {
        crate::project::project_name(&self.ident()?)
    }

    /// `ON` or `OFF`.
    fn on_off(&mut self) -> Result<bool> {
        if self.word("ON") {
            Ok(true)
        } else if self.word("OFF") {
            Ok(false)
        } else {
            self.err("expected ON or OFF")
        }
    }

    /// The body of `ALTER PROJECT p ...` after the project name.
    fn project_action(&mut self) -> Result<ProjectAction> {
        use ProjectAction::*;
        Ok(if self.words(&["ADD", "MEMBER"]) {
            AddMember(self.ident()?)
        } else if self.words(&["REMOVE", "MEMBER"]) {
            RemoveMember(self.ident()?)
        } else if self.words(&["ADD", "OWNER"]) {
            AddOwner(self.ident()?)
        } else if self.words(&["REMOVE", "OWNER"]) {
            RemoveOwner(self.ident()?)
        } else if self.words(&["ADD", "DATA", "SOURCE"]) {
            AddSource(self.source()?)
        } else if self.words(&["REMOVE", "DATA", "SOURCE"]) {
            RemoveSource(self.source()?)
        } else if self.words(&["ADD", "PURPOSE"]) {
            AddPurpose(self.name()?)
        } else if self.words(&["REMOVE", "PURPOSE"]) {
            RemovePurpose(self.name()?)
        } else if self.words(&["SET", "DOCUMENTATION"]) {
            SetDocumentation(self.string()?)
        } else if self.words(&["SET", "EQUALIZATION"]) {
            SetEqualization(self.on_off()?)
        } else if self.words(&["SET", "EQUALIZED", "ENTITLEMENTS"]) {
            if self.word("RECOMMENDED") {
                SetEntitlementsRecommended
            } else {
                SetEntitlements(self.condition()?)
            }
        } else if self.words(&["SET", "MASKED", "JOINS"]) {
            SetMaskedJoins(self.on_off()?)
        } else {
            return self.err(
                "expected ADD/REMOVE MEMBER, ADD/REMOVE OWNER, ADD/REMOVE DATA SOURCE, \
                 ADD/REMOVE PURPOSE, SET DOCUMENTATION, SET EQUALIZATION, \
                 SET EQUALIZED ENTITLEMENTS or SET MASKED JOINS",
            );
        })
    }

    fn string(&mut self) -> Result<String> {
        let r = self.p.parse_literal_string();
        self.pe(r)
    }

    fn uint(&mut self) -> Result<u64> {
        let r = self.p.parse_literal_uint();
        self.pe(r)
    }

    fn number(&mut self) -> Result<f64> {
        let r = self.p.parse_number_value();
        let v = self.pe(r)?;
        v.to_string()
            .parse::<f64>()
            .or_else(|_| self.err(format!("expected a number, found {v}")))
    }

    /// `('a', 'b')` or `'a'`.
    fn strings(&mut self) -> Result<Vec<String>> {
        if self.p.consume_token(&Token::LParen) {
            let r = self.p.parse_comma_separated(|p| p.parse_literal_string());
            let v = self.pe(r)?;
            let r = self.p.expect_token(&Token::RParen);
            self.pe(r)?;
            Ok(v)
        } else {
            Ok(vec![self.string()?])
        }
    }

    /// `(a, b)` identifiers.
    fn idents(&mut self) -> Result<Vec<String>> {
        let r = self.p.expect_token(&Token::LParen);
        self.pe(r)?;
        let r = self.p.parse_comma_separated(|p| p.parse_identifier());
        let v = self.pe(r)?;
        let r = self.p.expect_token(&Token::RParen);
        self.pe(r)?;
        Ok(v.into_iter().map(|i| i.value).collect())
    }

    /// An expression, returned as its canonical SQL text.
    fn expr_text(&mut self) -> Result<String> {
        let r = self.p.parse_expr();
        Ok(self.pe(r)?.to_string())
    }

    /// A condition (validated: principal functions only).
    fn condition(&mut self) -> Result<String> {
        let text = self.expr_text()?;
        parse_condition(&text)?;
        Ok(text)
    }

    fn applicability(&mut self) -> Result<Applicability> {
        Ok(if self.word("UNLESS") {
            Applicability::Unless(self.condition()?)
        } else if self.word("FOR") {
            Applicability::For(self.condition()?)
        } else {
            Applicability::Always
        })
    }

    fn end(&mut self) -> Result<()> {
        while self.p.consume_token(&Token::SemiColon) {}
        match self.p.peek_token().token {
            Token::EOF => Ok(()),
            t => self.err(format!("unexpected {t} at end of statement")),
        }
    }

    fn mask_method(&mut self) -> Result<MaskMethod> {
        let Some(w) = self.peek_word(0) else {
            return self.err("expected a masking method");
        };
        self.p.next_token();
        Ok(match w.as_str() {
            "NULL" => MaskMethod::Null,
            "CONSTANT" => MaskMethod::Constant(self.string()?),
            "HASH" => MaskMethod::Hash,
            "ENCRYPT" => MaskMethod::Encrypt,
            "REGEX" => {
                let pattern = self.string()?;
                self.expect("REPLACE")?;
                let replacement = self.string()?;
                MaskMethod::Regex {
                    pattern,
                    replacement,
                }
            }
            "SHOW_FIRST" => MaskMethod::ShowFirst(self.uint()? as usize),
            "SHOW_LAST" => MaskMethod::ShowLast(self.uint()? as usize),
            "ROUND" => MaskMethod::Round(self.number()?),
            "DATE_TRUNC" => MaskMethod::DateTrunc(self.string()?.to_ascii_lowercase()),
            other => {
                return self.err(format!(
                    "unknown masking method {other}; expected NULL, CONSTANT, HASH, ENCRYPT, \
                     REGEX, SHOW_FIRST, SHOW_LAST, ROUND or DATE_TRUNC"
                ))
            }
        })
    }
}

/// Parses `sql` as a governance statement; Ok(None) when it is not one
/// (then it is ordinary SQL for DataFusion).
pub fn parse(sql: &str) -> Result<Option<GovStatement>> {
    let normalized = crate::condition::normalize_current_user(sql);
    let dialect = BoundedDialect::for_sql(&normalized);
    dialect.finish(parse_with(&dialect, &normalized))
}

fn parse_with(dialect: &BoundedDialect, sql: &str) -> Result<Option<GovStatement>> {
    // Before any parser (ours or DataFusion's) sees the statement; text
    // that does not tokenize is left to DataFusion's error.
    let Ok(tokens) = crate::sql_guard::checked_tokens(dialect, sql)? else {
        return Ok(None);
    };
    let parser = crate::sql_guard::quiet_parser(dialect, tokens);
    let mut p = P { p: parser, sql };
    let first = p.peek_word(0).unwrap_or_default();
    let second = p.peek_word(1).unwrap_or_default();
    let stmt = match (first.as_str(), second.as_str()) {
        ("CREATE", "USER") => {
            p.words(&["CREATE", "USER"]);
            let name = p.ident()?;
            let mut password = None;
            let mut password_hash = None;
            let mut groups = vec![];
            let mut attributes = vec![];
            loop {
                if p.words(&["PASSWORD", "HASH"]) {
                    password_hash = Some(p.string()?);
                } else if p.word("PASSWORD") {
                    password = Some(p.string()?);
                } else if p.word("GROUPS") {
                    groups = p.strings()?;
                } else if p.word("ATTRIBUTES") {
                    let r = p.p.expect_token(&Token::LParen);
                    p.pe(r)?;
                    loop {
                        let key = p.ident()?;
                        let r = p.p.expect_token(&Token::Eq);
                        p.pe(r)?;
                        attributes.push((key, p.strings()?));
                        if !p.p.consume_token(&Token::Comma) {
                            break;
                        }
                    }
                    let r = p.p.expect_token(&Token::RParen);
                    p.pe(r)?;
                } else {
                    break;
                }
            }
            if password.is_some() && password_hash.is_some() {
                return p.err("a user has a PASSWORD or a PASSWORD HASH, not both");
            }
            GovStatement::CreateUser {
                name,
                password,
                password_hash,
                groups,
                attributes,
            }
        }
        ("ALTER", "USER") => {
            p.words(&["ALTER", "USER"]);
            let user = p.ident()?;
            if p.words(&["ADD", "GROUP"]) {
                GovStatement::AlterUserAddGroup {
                    user,
                    group: p.string()?,
                }
            } else if p.words(&["REMOVE", "GROUP"]) {
                GovStatement::AlterUserRemoveGroup {
                    user,
                    group: p.string()?,
                }
            } else if p.words(&["SET", "ATTRIBUTE"]) {
                let key = p.ident()?;
                let r = p.p.expect_token(&Token::Eq);
                p.pe(r)?;
                GovStatement::AlterUserSetAttribute {
                    user,
                    key,
                    values: p.strings()?,
                }
            } else if p.words(&["UNSET", "ATTRIBUTE"]) {
                GovStatement::AlterUserUnsetAttribute {
                    user,
                    key: p.ident()?,
                }
            } else if p.words(&["SET", "PASSWORD"]) {
                GovStatement::AlterUserSetPassword {
                    user,
                    password: p.string()?,
                }
            } else {
                return p.err(
                    "expected ADD GROUP, REMOVE GROUP, SET ATTRIBUTE, UNSET ATTRIBUTE or SET PASSWORD",
                );
            }
        }
        ("GRANT" | "REVOKE", "PERMISSION") => {
            p.p.next_token();
            p.p.next_token();
            let permission: Permission = p.ident()?.parse()?;
            if first == "GRANT" {
                p.expect("TO")?;
                GovStatement::GrantPermission {
                    permission,
                    user: p.ident()?,
                }
            } else {
                p.expect("FROM")?;
                GovStatement::RevokePermission {
                    permission,
                    user: p.ident()?,
                }
            }
        }
        ("DROP", "USER") => {
            p.words(&["DROP", "USER"]);
            GovStatement::DropUser { name: p.ident()? }
        }
        ("DROP", "POLICY") => {
            p.words(&["DROP", "POLICY"]);
            GovStatement::DropPolicy { name: p.ident()? }
        }
        ("DROP", "DATA") => {
            p.words(&["DROP", "DATA"]);
            p.expect("SOURCE")?;
            GovStatement::DropDataSource {
                source: p.source()?,
            }
        }
        ("CREATE", "DATA") => {
            p.words(&["CREATE", "DATA"]);
            p.expect("SOURCE")?;
            let source = p.source()?;
            p.expect("FROM")?;
            p.expect("PARQUET")?;
            GovStatement::CreateDataSource {
                source,
                location: p.string()?,
            }
        }
        ("ALTER", "DATA") => {
            p.words(&["ALTER", "DATA"]);
            p.expect("SOURCE")?;
            let source = p.source()?;
            if p.words(&["TAG", "COLUMN"]) {
                let column = p.ident()?;
                p.expect("WITH")?;
                GovStatement::TagColumn {
                    source,
                    column,
                    tags: p.strings()?,
                }
            } else if p.words(&["UNTAG", "COLUMN"]) {
                let column = p.ident()?;
                let tags = if p.word("WITH") { p.strings()? } else { vec![] };
                GovStatement::UntagColumn {
                    source,
                    column,
                    tags,
                }
            } else if p.words(&["SET", "SUBSCRIPTION"]) {
                let subscription = if p.word("ANYONE") {
                    Subscription::Anyone
                } else if p.word("WHEN") {
                    Subscription::When(p.condition()?)
                } else if p.word("USERS") {
                    Subscription::Users(p.idents()?)
                } else if p.words(&["OWNERS", "ONLY"]) {
                    Subscription::OwnersOnly
                } else {
                    return p.err("expected ANYONE, WHEN <condition>, USERS (...) or OWNERS ONLY");
                };
                GovStatement::SetSubscription {
                    source,
                    subscription,
                }
            } else if p.words(&["ADD", "OWNER"]) {
                GovStatement::AddOwner {
                    source,
                    user: p.ident()?,
                }
            } else if p.words(&["REMOVE", "OWNER"]) {
                GovStatement::RemoveOwner {
                    source,
                    user: p.ident()?,
                }
            } else {
                return p.err(
                    "expected TAG COLUMN, UNTAG COLUMN, SET SUBSCRIPTION, ADD OWNER or REMOVE OWNER",
                );
            }
        }
        ("CREATE", "MASKING") | ("CREATE", "ROW") => {
            let masking = second == "MASKING";
            p.p.next_token();
            p.p.next_token();
            p.expect("POLICY")?;
            let name = p.ident()?;
            p.expect("ON")?;
            let target = if p.words(&["COLUMNS", "TAGGED"]) {
                if !masking {
                    return p.err("row policies target a source or SOURCES TAGGED '<tag>'");
                }
                Target::Tag(p.string()?)
            } else if p.words(&["SOURCES", "TAGGED"]) {
                if masking {
                    return p
                        .err("masking policies target COLUMNS TAGGED '<tag>' or source (columns)");
                }
                Target::Tag(p.string()?)
            } else {
                let source = p.source()?;
                let columns = if masking { p.idents()? } else { vec![] };
                Target::Source { source, columns }
            };
            p.expect("USING")?;
            if masking {
                let method = p.mask_method()?;
                GovStatement::CreateMaskingPolicy {
                    name,
                    target,
                    method,
                    applicability: p.applicability()?,
                }
            } else {
                let predicate = p.expr_text()?;
                GovStatement::CreateRowPolicy {
                    name,
                    target,
                    predicate,
                    applicability: p.applicability()?,
                }
            }
        }
        ("SHOW", "USERS") => {
            p.words(&["SHOW", "USERS"]);
            GovStatement::ShowUsers
        }
        ("SHOW", "POLICIES") => {
            p.words(&["SHOW", "POLICIES"]);
            GovStatement::ShowPolicies
        }
        ("SHOW", "DATA") => {
            p.words(&["SHOW", "DATA"]);
            p.expect("SOURCES")?;
            GovStatement::ShowDataSources
        }
        ("SHOW", "POLICY") => {
            p.words(&["SHOW", "POLICY"]);
            p.expect("INFO")?;
            p.expect("FOR")?;
            let source = p.source()?;
            let as_user = if p.words(&["AS", "USER"]) {
                Some(p.ident()?)
            } else {
                None
            };
            let in_project = if p.words(&["IN", "PROJECT"]) {
                Some(p.ident()?)
            } else {
                None
            };
            GovStatement::ShowPolicyInfo {
                source,
                as_user,
                in_project,
            }
        }
        ("VERIFY", "AUDIT") => {
            p.words(&["VERIFY", "AUDIT"]);
            GovStatement::VerifyAudit
        }
        ("CREATE", "PURPOSE") => {
            p.words(&["CREATE", "PURPOSE"]);
            let name = p.name()?;
            let (mut parent, mut description, mut acknowledgement) = (None, None, None);
            loop {
                if p.word("PARENT") {
                    parent = Some(p.name()?);
                } else if p.word("DESCRIPTION") {
                    description = Some(p.string()?);
                } else if p.word("ACKNOWLEDGEMENT") {
                    acknowledgement = Some(p.string()?);
                } else {
                    break;
                }
            }
            GovStatement::CreatePurpose {
                name,
                parent,
                description,
                acknowledgement,
            }
        }
        ("DROP", "PURPOSE") => {
            p.words(&["DROP", "PURPOSE"]);
            GovStatement::DropPurpose { name: p.name()? }
        }
        ("SHOW", "PURPOSES") => {
            p.words(&["SHOW", "PURPOSES"]);
            GovStatement::ShowPurposes
        }
        ("CREATE", "PROJECT") => {
            p.words(&["CREATE", "PROJECT"]);
            let name = p.project()?;
            let documentation = if p.word("DOCUMENTATION") {
                Some(p.string()?)
            } else {
                None
            };
            GovStatement::CreateProject {
                name,
                documentation,
            }
        }
        ("DROP", "PROJECT") => {
            p.words(&["DROP", "PROJECT"]);
            GovStatement::DropProject { name: p.project()? }
        }
        ("ALTER", "PROJECT") | ("EXPLAIN", "ALTER") => {
            let explain = first == "EXPLAIN";
            if explain && p.peek_word(2).as_deref() != Some("PROJECT") {
                return Ok(None); // EXPLAIN ALTER TABLE ...: DataFusion's
            }
            p.word("EXPLAIN");
            p.words(&["ALTER", "PROJECT"]);
            let project = p.project()?;
            let action = p.project_action()?;
            if explain {
                GovStatement::ExplainAlterProject { project, action }
            } else {
                GovStatement::AlterProject { project, action }
            }
        }
        ("APPROVE" | "DENY" | "ACKNOWLEDGE", "PURPOSE") => {
            p.p.next_token();
            p.p.next_token();
            let purpose = p.name()?;
            p.expect("FOR")?;
            p.expect("PROJECT")?;
            let project = p.project()?;
            match first.as_str() {
                "ACKNOWLEDGE" => GovStatement::AcknowledgePurpose { purpose, project },
                verb => GovStatement::DecidePurpose {
                    purpose,
                    project,
                    approve: verb == "APPROVE",
                },
            }
        }
        ("USE", "PROJECT") => {
            p.words(&["USE", "PROJECT"]);
            let project = if p.word("NONE") {
                None
            } else {
                Some(p.project()?)
            };
            GovStatement::UseProject { project }
        }
        ("ROTATE", "KEYS") => {
            p.words(&["ROTATE", "KEYS"]);
            let project = if p.words(&["FOR", "PROJECT"]) {
                Some(p.project()?)
            } else {
                None
            };
            GovStatement::RotateKeys { project }
        }
        ("SHOW", "PROJECTS") => {
            p.words(&["SHOW", "PROJECTS"]);
            GovStatement::ShowProjects
        }
        ("DESCRIBE", "PROJECT") => {
            p.words(&["DESCRIBE", "PROJECT"]);
            GovStatement::DescribeProject { name: p.project()? }
        }
        ("CREATE", "DERIVED") => {
            p.words(&["CREATE", "DERIVED", "DATA"]);
            p.expect("SOURCE")?;
            let source = p.source()?;
            p.expect("FROM")?;
            p.expect("WORKSPACE")?;
            p.expect("TABLE")?;
            GovStatement::CreateDerivedSource {
                source,
                table: p.ident()?,
            }
        }
        ("DESCRIBE", "DATA") => {
            p.words(&["DESCRIBE", "DATA"]);
            p.expect("SOURCE")?;
            GovStatement::DescribeDataSource {
                source: p.source()?,
            }
        }
        ("SHOW", "TABLES") if matches!(p.peek_word(2).as_deref(), Some("IN" | "FROM")) => {
            p.p.next_token();
            p.p.next_token();
            p.p.next_token();
            GovStatement::ShowTablesIn { schema: p.ident()? }
        }
        _ => return Ok(None),
    };
    p.end()?;
    Ok(Some(stmt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> GovStatement {
        parse(sql)
            .unwrap()
            .unwrap_or_else(|| panic!("{sql} not recognized"))
    }

    #[test]
    fn design_forms_parse() {
        assert_eq!(
            ok("CREATE USER alice PASSWORD 's3cret' GROUPS ('hr', 'analysts') ATTRIBUTES (region = ('EU', 'US'), clearance = 'high')"),
            GovStatement::CreateUser {
                name: "alice".into(),
                password: Some("s3cret".into()),
                password_hash: None,
                groups: vec!["hr".into(), "analysts".into()],
                attributes: vec![
                    ("region".into(), vec!["EU".into(), "US".into()]),
                    ("clearance".into(), vec!["high".into()])
                ],
            }
        );
        for sql in [
            "ALTER USER alice ADD GROUP 'hr'",
            "ALTER USER alice REMOVE GROUP 'hr'",
            "ALTER USER alice SET ATTRIBUTE region = ('EU')",
            "ALTER USER alice UNSET ATTRIBUTE region",
            "GRANT PERMISSION GOVERNANCE TO alice",
            "REVOKE PERMISSION GOVERNANCE FROM alice",
            "DROP USER alice",
            "CREATE DATA SOURCE hr.employees FROM PARQUET 'testdata/hr/employees.parquet'",
            "ALTER DATA SOURCE hr.employees TAG COLUMN ssn WITH ('PII.SSN')",
            "ALTER DATA SOURCE hr.employees SET SUBSCRIPTION WHEN has_group('hr') OR has_purpose('Attrition')",
            "ALTER DATA SOURCE hr.employees SET SUBSCRIPTION ANYONE",
            "DROP DATA SOURCE hr.employees",
            "CREATE MASKING POLICY pii ON COLUMNS TAGGED 'PII' USING HASH UNLESS has_group('hr')",
            "CREATE MASKING POLICY card ON payments.cards (card_number) USING SHOW_LAST 4 UNLESS has_attribute('clearance', 'high')",
            "CREATE ROW POLICY eu_only ON sales.orders USING attribute_contains('region', region) UNLESS has_group('global')",
            "DROP POLICY pii;",
            "SHOW USERS",
            "SHOW DATA SOURCES",
            "SHOW POLICIES",
            "SHOW POLICY INFO FOR hr.employees AS USER bob",
            "VERIFY AUDIT",
            "CREATE PURPOSE 'Fraud Detection' PARENT 'Research' ACKNOWLEDGEMENT 'I will use this data only for fraud detection'",
            "CREATE PROJECT fraud DOCUMENTATION '...'",
            "ALTER PROJECT fraud ADD MEMBER bob",
            "ALTER PROJECT fraud REMOVE MEMBER bob",
            "ALTER PROJECT fraud ADD DATA SOURCE hr.employees",
            "ALTER PROJECT fraud REMOVE DATA SOURCE hr.employees",
            "ALTER PROJECT fraud ADD PURPOSE 'Fraud Detection'",
            "APPROVE PURPOSE 'Fraud Detection' FOR PROJECT fraud",
            "DENY PURPOSE 'Fraud Detection' FOR PROJECT fraud",
            "ACKNOWLEDGE PURPOSE 'Fraud Detection' FOR PROJECT fraud",
            "ALTER PROJECT fraud SET EQUALIZATION ON",
            "ALTER PROJECT fraud SET EQUALIZATION OFF",
            "ALTER PROJECT fraud SET EQUALIZED ENTITLEMENTS RECOMMENDED",
            "ALTER PROJECT fraud SET EQUALIZED ENTITLEMENTS (has_group('claims') AND has_attribute('region', 'EU'))",
            "USE PROJECT fraud",
            "USE PROJECT NONE",
            "SHOW PURPOSES",
            "SHOW PROJECTS",
            "DESCRIBE PROJECT fraud",
            "EXPLAIN ALTER PROJECT fraud ADD MEMBER carol",
            "EXPLAIN ALTER PROJECT fraud ADD DATA SOURCE payments.cards",
        ] {
            ok(sql);
        }
        assert_eq!(
            ok("EXPLAIN ALTER PROJECT Fraud ADD MEMBER carol"),
            GovStatement::ExplainAlterProject {
                project: "fraud".into(),
                action: ProjectAction::AddMember("carol".into()),
            }
        );
        assert!(parse("EXPLAIN SELECT 1").unwrap().is_none());
        assert!(parse("EXPLAIN ALTER TABLE t ADD COLUMN x INT")
            .unwrap()
            .is_none());
        assert!(parse("CREATE PROJECT veil").is_err());
        assert_eq!(
            ok("ALTER PROJECT fraud SET MASKED JOINS ON"),
            GovStatement::AlterProject {
                project: "fraud".into(),
                action: ProjectAction::SetMaskedJoins(true),
            }
        );
        assert_eq!(
            ok("ROTATE KEYS FOR PROJECT fraud"),
            GovStatement::RotateKeys {
                project: Some("fraud".into())
            }
        );
        assert_eq!(
            ok("ROTATE KEYS"),
            GovStatement::RotateKeys { project: None }
        );
    }

    #[test]
    fn row_policy_keeps_predicate_and_condition_apart() {
        match ok("CREATE ROW POLICY eu ON sales.orders USING attribute_contains('region', region) UNLESS has_group('global')") {
            GovStatement::CreateRowPolicy { predicate, applicability, .. } => {
                assert_eq!(predicate, "attribute_contains('region', region)");
                assert_eq!(applicability, Applicability::Unless("has_group('global')".into()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ordinary_sql_is_not_governance() {
        for sql in [
            "SELECT 1",
            "SHOW TABLES",
            "DROP TABLE x",
            "CREATE TABLE t AS SELECT 1",
            "not sql at all",
        ] {
            assert!(parse(sql).unwrap().is_none(), "{sql}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse("GRANT PERMISSION ROOT TO alice")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown permission 'ROOT'"), "{e}");
        let e = parse("CREATE MASKING POLICY p ON COLUMNS TAGGED 'PII' USING SCRAMBLE")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown masking method SCRAMBLE"), "{e}");
        let e =
            parse("CREATE MASKING POLICY p ON COLUMNS TAGGED 'PII' USING HASH UNLESS salary > 3")
                .unwrap_err()
                .to_string();
        assert!(e.contains("invalid condition"), "{e}");
        let e = parse("CREATE DATA SOURCE employees FROM PARQUET 'x'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be schema.table"), "{e}");
        assert!(parse("CREATE USER bob PASSWORD 'x' extra").is_err());
    }
}
