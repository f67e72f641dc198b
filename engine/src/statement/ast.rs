//! The parsed form of governance statements.

use crate::model::{Applicability, MaskMethod, Permission, Subscription, Target};

/// One governance statement. Its variant name (`GovStatement::kind`) is
/// the audit action of statements that change nothing.
#[derive(Debug, Clone, PartialEq, strum::IntoStaticStr)]
#[allow(missing_docs)]
pub enum GovStatement {
    CreateUser {
        name: String,
        password: Option<String>,
        /// `PASSWORD HASH '<argon2id PHC string>'` (what `veil export` writes).
        password_hash: Option<String>,
        groups: Vec<String>,
        attributes: Vec<(String, Vec<String>)>,
    },
    AlterUserAddGroup {
        user: String,
        group: String,
    },
    AlterUserRemoveGroup {
        user: String,
        group: String,
    },
    AlterUserSetAttribute {
        user: String,
        key: String,
        values: Vec<String>,
    },
    AlterUserUnsetAttribute {
        user: String,
        key: String,
    },
    AlterUserSetPassword {
        user: String,
        password: String,
    },
    GrantPermission {
        permission: Permission,
        user: String,
    },
    RevokePermission {
        permission: Permission,
        user: String,
    },
    DropUser {
        name: String,
    },
    CreateDataSource {
        source: String,
        location: String,
    },
    TagColumn {
        source: String,
        column: String,
        tags: Vec<String>,
    },
    UntagColumn {
        source: String,
        column: String,
        tags: Vec<String>,
    },
    SetSubscription {
        source: String,
        subscription: Subscription,
    },
    AddOwner {
        source: String,
        user: String,
    },
    RemoveOwner {
        source: String,
        user: String,
    },
    DropDataSource {
        source: String,
    },
    CreateMaskingPolicy {
        name: String,
        target: Target,
        method: MaskMethod,
        applicability: Applicability,
    },
    CreateRowPolicy {
        name: String,
        target: Target,
        predicate: String,
        applicability: Applicability,
    },
    DropPolicy {
        name: String,
    },
    ShowUsers,
    ShowDataSources,
    /// `DESCRIBE DATA SOURCE s`: kind, lineage, staleness, columns.
    DescribeDataSource {
        source: String,
    },
    /// `SHOW TABLES IN schema` (the workspace shows versions, rows, sizes).
    ShowTablesIn {
        schema: String,
    },
    /// `CREATE DERIVED DATA SOURCE s FROM WORKSPACE TABLE t`.
    CreateDerivedSource {
        source: String,
        table: String,
    },
    ShowPolicies,
    ShowPolicyInfo {
        source: String,
        as_user: Option<String>,
        in_project: Option<String>,
    },
    VerifyAudit,
    CreatePurpose {
        name: String,
        parent: Option<String>,
        description: Option<String>,
        acknowledgement: Option<String>,
    },
    DropPurpose {
        name: String,
    },
    ShowPurposes,
    CreateProject {
        name: String,
        documentation: Option<String>,
    },
    DropProject {
        name: String,
    },
    AlterProject {
        project: String,
        action: ProjectAction,
    },
    /// `EXPLAIN ALTER PROJECT ...`: what the change would do, changing nothing.
    ExplainAlterProject {
        project: String,
        action: ProjectAction,
    },
    /// `APPROVE` (true) or `DENY` (false) `PURPOSE p FOR PROJECT x`.
    DecidePurpose {
        purpose: String,
        project: String,
        approve: bool,
    },
    AcknowledgePurpose {
        purpose: String,
        project: String,
    },
    /// `USE PROJECT p` / `USE PROJECT NONE` (None).
    UseProject {
        project: Option<String>,
    },
    ShowProjects,
    /// `ROTATE KEYS` (column keys) or `ROTATE KEYS FOR PROJECT p`.
    RotateKeys {
        project: Option<String>,
    },
    DescribeProject {
        name: String,
    },
}

/// One change of `ALTER PROJECT`.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum ProjectAction {
    AddMember(String),
    RemoveMember(String),
    AddOwner(String),
    RemoveOwner(String),
    AddSource(String),
    RemoveSource(String),
    AddPurpose(String),
    RemovePurpose(String),
    SetDocumentation(String),
    SetEqualization(bool),
    /// `SET EQUALIZED ENTITLEMENTS RECOMMENDED`.
    SetEntitlementsRecommended,
    /// `SET EQUALIZED ENTITLEMENTS (<condition>)`.
    SetEntitlements(String),
    SetMaskedJoins(bool),
}

impl GovStatement {
    /// The statement's kind, e.g. `ShowUsers`.
    pub fn kind(&self) -> &'static str {
        self.into()
    }
}
