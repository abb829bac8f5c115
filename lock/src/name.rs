//! Lock names. Any string is a valid name: the server sees `jobq-lock:` + SHA1(schema, 0x00,
//! name) over their bytes, 50 ASCII characters. MySQL limits names to 64 characters and folds their case, MariaDB
//! compares bytes up to 192; hashing makes every name fit and keeps distinct names distinct on
//! both, and the schema keeps two applications on one server apart.

/// The SQL expression of the server-side name for the bound user name (one `?`).
// language=MySQL
pub(crate) const SERVER_NAME: &str =
    "CONCAT('jobq-lock:', SHA1(CONCAT(CAST(COALESCE(DATABASE(), '') AS BINARY), X'00', CAST(? AS BINARY))))";
