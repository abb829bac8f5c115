//! Lock names. Any string is a valid name: the server sees `jobq-lock:` + SHA1(schema, 0x00,
//! name) over their bytes, 50 ASCII characters (`jobq_sqlkit::lock_name_sql`). MySQL limits
//! names to 64 characters and folds their case, MariaDB compares bytes up to 192; hashing makes
//! every name fit and keeps distinct names distinct on both, and the schema keeps two
//! applications on one server apart.

use std::sync::LazyLock;

/// The SQL expression of the server-side name for the bound user name (one `?`).
pub(crate) static SERVER_NAME: LazyLock<String> =
    LazyLock::new(|| jobq_sqlkit::lock_name_sql("jobq-lock:"));
