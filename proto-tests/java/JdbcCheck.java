// The PostgreSQL JDBC driver (pgjdbc) through pgward under a role that may only read
// public.orders. Driven by proto-tests/tests/jdbc_client.rs, which compiles this file with
// `javac -cp postgresql.jar` (no build tool) and runs
//
//     java -cp <classes>:postgresql.jar JdbcCheck <jdbc url> <user>
//
// It does what JDBC tools do: connect (with the driver's own startup parameters), read the
// DatabaseMetaData and ResultSetMetaData, run a parameterised query often enough that the
// driver switches to a named server-side prepared statement (prepareThreshold, 5 by default),
// read numeric / timestamptz / text values, run transactions (isolation level, read-only,
// savepoints), and check that a write and a read of another table are refused with SQLState
// 42501 while the connection stays usable. Every statement that must be refused carries a
// `jdbc-denied-` comment so the test can prove from the server log that none arrived.
//
// Prints one line per check ("ok <name> ..." or "FAIL <name> ..."), goes on after a failure so
// one run shows every problem, and exits 1 if any check failed.

import java.math.BigDecimal;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;

public final class JdbcCheck {
    private static final List<String> FAILURES = new ArrayList<>();

    /** The rows the test database holds: orders.id = n has total n * 1.25 and placed_at
     * 2024-05-06 07:08:09+00 plus n hours. */
    private static final OffsetDateTime BASE_TIME =
            OffsetDateTime.of(2024, 5, 6, 7, 8, 9, 0, ZoneOffset.UTC);

    @FunctionalInterface
    private interface Check {
        /** Returns a short detail for the "ok" line; throws (or calls fail) on a problem. */
        String run() throws Exception;
    }

    private static final class CheckFailed extends Exception {
        private static final long serialVersionUID = 1L;

        CheckFailed(String message) {
            super(message);
        }
    }

    private static void check(String name, Check body) {
        try {
            String detail = body.run();
            System.out.println("ok " + name + (detail.isEmpty() ? "" : " (" + detail + ")"));
        } catch (CheckFailed e) {
            fail(name, e.getMessage());
        } catch (SQLException e) {
            fail(name, describe(e));
        } catch (Exception e) {
            fail(name, e.toString());
        }
        System.out.flush();
    }

    private static void fail(String name, String detail) {
        System.out.println("FAIL " + name + ": " + detail);
        FAILURES.add(name + ": " + detail);
    }

    private static void expect(boolean cond, String message) throws CheckFailed {
        if (!cond) {
            throw new CheckFailed(message);
        }
    }

    private static String describe(SQLException e) {
        StringBuilder s = new StringBuilder();
        for (SQLException x = e; x != null; x = x.getNextException()) {
            if (s.length() > 0) {
                s.append(" / next: ");
            }
            s.append("SQLState ").append(x.getSQLState()).append(": ").append(x.getMessage());
        }
        return s.toString();
    }

    /** Runs `action`, which must be refused by pgward's policy: SQLState 42501 and pgward's
     * message. A BatchUpdateException carries the server's error as its next exception. */
    private static String expectDenied(Check action) throws Exception {
        try {
            action.run();
        } catch (SQLException e) {
            SQLException cause = e;
            if (e instanceof BatchUpdateException && e.getNextException() != null) {
                cause = e.getNextException();
            }
            expect("42501".equals(cause.getSQLState())
                            && cause.getMessage().contains("pgward policy denied"),
                    "expected a pgward policy denial (42501), got " + describe(e));
            return "42501";
        }
        throw new CheckFailed("the statement was not refused");
    }

    private static long countOrders(Connection c) throws SQLException {
        try (Statement st = c.createStatement();
                ResultSet rs = st.executeQuery("SELECT count(*) FROM orders")) {
            rs.next();
            return rs.getLong(1);
        }
    }

    /** Values of one column of a metadata result set. */
    private static Set<String> column(ResultSet rs, String label) throws SQLException {
        Set<String> out = new TreeSet<>();
        try (rs) {
            while (rs.next()) {
                out.add(rs.getString(label));
            }
        }
        return out;
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: JdbcCheck <jdbc url> <user>");
            System.exit(2);
        }
        String url = args[0];
        Properties props = new Properties();
        props.setProperty("user", args[1]);

        Connection conn;
        try {
            conn = DriverManager.getConnection(url, props);
        } catch (SQLException e) {
            System.out.println("FAIL connect: " + describe(e));
            System.exit(1);
            return;
        }
        try (conn) {
            run(conn);
        }
        if (!FAILURES.isEmpty()) {
            System.out.println(FAILURES.size() + " jdbc check(s) failed:");
            for (String f : FAILURES) {
                System.out.println("  " + f);
            }
            System.exit(1);
        }
        System.out.println("all jdbc checks passed");
    }

    private static void run(Connection conn) throws SQLException {
        DatabaseMetaData md = conn.getMetaData();
        System.out.println("ok connect (" + md.getDatabaseProductName() + " "
                + md.getDatabaseProductVersion() + ", driver " + md.getDriverVersion() + ")");

        // ---- DatabaseMetaData, as DBeaver / IntelliJ / Hibernate read it. ----
        check("metadata.getTables", () -> {
            Set<String> t = column(md.getTables(null, "public", "%", new String[] {"TABLE"}),
                    "TABLE_NAME");
            expect(t.contains("orders") && t.contains("salaries"), "tables: " + t);
            return String.join(",", t);
        });
        check("metadata.getColumns", () -> {
            List<String> cols = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "public", "orders", "%")) {
                while (rs.next()) {
                    cols.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME")
                            + (rs.getString("TYPE_NAME").equals("numeric")
                                    ? "(" + rs.getInt("COLUMN_SIZE") + ","
                                            + rs.getInt("DECIMAL_DIGITS") + ")"
                                    : "")
                            + ("YES".equals(rs.getString("IS_AUTOINCREMENT")) ? ":auto" : ""));
                }
            }
            expect(cols.equals(List.of("id:serial:auto", "item:text", "qty:int4",
                            "total:numeric(10,2)", "placed_at:timestamptz")),
                    "columns of orders: " + cols);
            return String.join(" ", cols);
        });
        check("metadata.getPrimaryKeys", () -> {
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "orders")) {
                expect(rs.next(), "no primary key reported");
                String pk = rs.getString("COLUMN_NAME") + " " + rs.getString("PK_NAME");
                expect(pk.equals("id orders_pkey"), "primary key: " + pk);
                expect(!rs.next(), "more than one key column");
                return pk;
            }
        });
        check("metadata.getIndexInfo", () -> {
            Set<String> ix = column(md.getIndexInfo(null, "public", "orders", false, false),
                    "INDEX_NAME");
            expect(ix.contains("orders_pkey"), "indexes: " + ix);
            return String.join(",", ix);
        });
        check("metadata.getImportedKeys/getExportedKeys", () -> {
            Set<String> imported = column(md.getImportedKeys(null, "public", "orders"),
                    "FKCOLUMN_NAME");
            Set<String> exported = column(md.getExportedKeys(null, "public", "orders"),
                    "FKTABLE_NAME");
            return "imported " + imported + ", exported " + exported;
        });
        check("metadata.getTypeInfo", () -> {
            Set<String> types = column(md.getTypeInfo(), "TYPE_NAME");
            for (String t : List.of("int4", "numeric", "text", "timestamptz", "bool")) {
                expect(types.contains(t), "getTypeInfo lacks " + t);
            }
            return types.size() + " types";
        });
        check("metadata.getSchemas", () -> {
            Set<String> s = column(md.getSchemas(), "TABLE_SCHEM");
            expect(s.contains("public") && s.contains("pg_catalog")
                            && s.contains("information_schema"),
                    "schemas: " + s);
            return String.join(",", s);
        });
        check("metadata.getCatalogs/getTableTypes", () -> {
            Set<String> cats = column(md.getCatalogs(), "TABLE_CAT");
            Set<String> types = column(md.getTableTypes(), "TABLE_TYPE");
            expect(cats.contains("app") && types.contains("TABLE"),
                    "catalogs " + cats + ", table types " + types);
            return "catalogs " + cats;
        });
        check("metadata.getFunctions/getProcedures", () -> {
            Set<String> f = column(md.getFunctions(null, "public", "%"), "FUNCTION_NAME");
            Set<String> p = column(md.getProcedures(null, "public", "%"), "PROCEDURE_NAME");
            return f.size() + " functions, " + p.size() + " procedures";
        });
        check("metadata.getTablePrivileges", () -> {
            Set<String> privs = column(md.getTablePrivileges(null, "public", "orders"),
                    "PRIVILEGE");
            return String.join(",", privs);
        });
        check("metadata.getSQLKeywords", () -> {
            String kw = md.getSQLKeywords();
            expect(kw != null && !kw.isEmpty(), "no keywords");
            return kw.split(",").length + " keywords";
        });

        // ---- Plain statements and ResultSetMetaData (which makes the driver query the
        // catalogs for nullability, base table and serial-ness). ----
        check("statement select + ResultSetMetaData", () -> {
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery(
                            "SELECT id, item, qty, total, placed_at FROM orders ORDER BY id LIMIT 3")) {
                ResultSetMetaData rmd = rs.getMetaData();
                expect(rmd.getColumnCount() == 5, "column count " + rmd.getColumnCount());
                expect(rmd.isNullable(3) == ResultSetMetaData.columnNoNulls,
                        "qty should be NOT NULL, isNullable = " + rmd.isNullable(3));
                expect(rmd.isAutoIncrement(1), "id should be auto-increment");
                String base = rmd.unwrap(org.postgresql.PGResultSetMetaData.class)
                        .getBaseTableName(1);
                expect("orders".equals(base), "base table " + base);
                expect("timestamptz".equals(rmd.getColumnTypeName(5)),
                        "type of placed_at " + rmd.getColumnTypeName(5));
                int n = 0;
                while (rs.next()) {
                    n++;
                }
                expect(n == 3, n + " rows");
                return "count " + countOrders(conn);
            }
        });

        // ---- A parameterised query executed past prepareThreshold: from the 5th execution
        // the driver parses it once as a named statement (S_n) and only binds/executes it. ----
        PreparedStatement byId = conn.prepareStatement(
                "SELECT id, item, qty, total, placed_at FROM orders WHERE id = ? /* jdbc-prepared */");
        check("prepared select x8 (server-side prepare)", () -> {
            for (int id = 1; id <= 8; id++) {
                byId.setInt(1, id);
                try (ResultSet rs = byId.executeQuery()) {
                    expect(rs.next(), "no row for id " + id);
                    checkOrderRow(rs, id);
                    expect(!rs.next(), "two rows for id " + id);
                }
            }
            boolean server = byId.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare();
            expect(server, "the driver did not switch to a server-side prepared statement");
            return "8 executions, server-prepared";
        });
        check("value types (numeric, timestamptz, text)", () -> {
            byId.setInt(1, 42);
            try (ResultSet rs = byId.executeQuery()) {
                expect(rs.next(), "no row 42");
                BigDecimal total = rs.getBigDecimal("total");
                OffsetDateTime at = rs.getObject("placed_at", OffsetDateTime.class);
                java.sql.Timestamp ts = rs.getTimestamp("placed_at");
                String item = rs.getString("item");
                expect(new BigDecimal("52.50").equals(total), "total " + total);
                expect(at.isEqual(BASE_TIME.plusHours(42)), "placed_at " + at);
                expect(ts.toInstant().equals(BASE_TIME.plusHours(42).toInstant()), "timestamp " + ts);
                expect("item42".equals(item), "item " + item);
                return total + " " + at.withOffsetSameInstant(ZoneOffset.UTC) + " " + item;
            }
        });

        // ---- Transactions. ----
        check("transaction (setAutoCommit(false), isolation, savepoint, commit)", () -> {
            conn.setTransactionIsolation(Connection.TRANSACTION_REPEATABLE_READ);
            conn.setAutoCommit(false);
            long before = countOrders(conn);
            Savepoint sp = conn.setSavepoint();
            byId.setInt(1, 7);
            try (ResultSet rs = byId.executeQuery()) {
                expect(rs.next(), "no row 7");
                checkOrderRow(rs, 7);
            }
            conn.rollback(sp);
            int iso = conn.getTransactionIsolation();
            expect(iso == Connection.TRANSACTION_REPEATABLE_READ, "isolation " + iso);
            long after = countOrders(conn);
            conn.commit();
            conn.setAutoCommit(true);
            conn.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
            expect(before == 100 && after == 100, "counts " + before + ", " + after);
            return "committed";
        });
        check("read-only transaction", () -> {
            conn.setReadOnly(true);
            conn.setAutoCommit(false);
            long n = countOrders(conn);
            conn.commit();
            conn.setAutoCommit(true);
            conn.setReadOnly(false);
            expect(n == 100, "count " + n);
            return "committed";
        });

        // ---- Refusals: a write and a read of another table, by each path the driver has. ----
        check("denied: INSERT into orders (Statement)", () -> expectDenied(() -> {
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("INSERT INTO orders (item, qty) VALUES ('jdbc-write', 1)"
                        + " /* jdbc-denied-1 */");
            }
            return "";
        }));
        check("usable after denied INSERT", () -> "count " + usable(conn, byId));
        check("denied: INSERT into orders (PreparedStatement)", () -> expectDenied(() -> {
            try (PreparedStatement ps = conn.prepareStatement(
                    "INSERT INTO orders (item, qty) VALUES (?, ?) /* jdbc-denied-2 */")) {
                ps.setString(1, "jdbc-write");
                ps.setInt(2, 2);
                ps.executeUpdate();
            }
            return "";
        }));
        check("usable after denied prepared INSERT", () -> "count " + usable(conn, byId));
        check("denied: SELECT from salaries (Statement)", () -> expectDenied(() -> {
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery("SELECT * FROM salaries /* jdbc-denied-3 */")) {
                rs.next();
            }
            return "";
        }));
        check("usable after denied SELECT", () -> "count " + usable(conn, byId));
        check("denied: SELECT from salaries (PreparedStatement)", () -> expectDenied(() -> {
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT amount FROM salaries WHERE id = ? /* jdbc-denied-4 */")) {
                ps.setInt(1, 1);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                }
            }
            return "";
        }));
        check("usable after denied prepared SELECT", () -> "count " + usable(conn, byId));
        check("denied: batch INSERT into orders", () -> expectDenied(() -> {
            try (PreparedStatement ps = conn.prepareStatement(
                    "INSERT INTO orders (item, qty) VALUES (?, ?) /* jdbc-denied-5 */")) {
                for (int i = 0; i < 3; i++) {
                    ps.setString(1, "jdbc-write");
                    ps.setInt(2, i);
                    ps.addBatch();
                }
                ps.executeBatch();
            }
            return "";
        }));
        check("usable after denied batch", () -> "count " + usable(conn, byId));
        check("denial inside a transaction aborts it (25P02), rollback recovers", () -> {
            conn.setAutoCommit(false);
            try {
                expect(countOrders(conn) == 100, "count before");
                expectDenied(() -> {
                    try (Statement st = conn.createStatement()) {
                        st.executeQuery("SELECT * FROM salaries /* jdbc-denied-6 */").close();
                    }
                    return "";
                });
                try {
                    countOrders(conn);
                    throw new CheckFailed("statement after the denial was not refused");
                } catch (SQLException e) {
                    expect("25P02".equals(e.getSQLState()),
                            "after the denial expected 25P02, got " + describe(e));
                }
                conn.rollback();
            } finally {
                conn.setAutoCommit(true);
            }
            return "count " + usable(conn, byId);
        });
    }

    /** The connection still answers, including the named prepared statement made earlier. */
    private static long usable(Connection conn, PreparedStatement byId) throws Exception {
        long n = countOrders(conn);
        expect(n == 100, "count " + n);
        byId.setInt(1, 9);
        try (ResultSet rs = byId.executeQuery()) {
            expect(rs.next(), "no row 9 from the prepared statement");
            checkOrderRow(rs, 9);
        }
        return n;
    }

    private static void checkOrderRow(ResultSet rs, int id) throws Exception {
        expect(rs.getInt("id") == id, "id " + rs.getInt("id"));
        expect(("item" + id).equals(rs.getString("item")), "item " + rs.getString("item"));
        expect(rs.getInt("qty") == id, "qty " + rs.getInt("qty"));
        BigDecimal want = new BigDecimal(id).multiply(new BigDecimal("1.25")).setScale(2);
        expect(want.equals(rs.getBigDecimal("total")), "total " + rs.getBigDecimal("total"));
        OffsetDateTime at = rs.getObject("placed_at", OffsetDateTime.class);
        expect(at.isEqual(BASE_TIME.plusHours(id)), "placed_at " + at);
    }
}
