// pgjdbc's LargeObjectManager through pgward. It sends the FunctionCall protocol message
// (the driver's Fastpath API), which pgward decides as a call of the function the OID names.
// Driven by proto-tests/tests/function_call.rs, which compiles this file with
// `javac -cp postgresql.jar` and runs
//
//     java -cp <classes>:postgresql.jar LargeObjects <jdbc url> <allowed user> <denied user>
//
// The allowed user's role may call lo_* by name; the denied user's may not. Prints one line
// per check ("ok ..." or "FAIL ...") and exits 1 if any check failed.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.Arrays;
import java.util.Properties;

import org.postgresql.PGConnection;
import org.postgresql.largeobject.LargeObject;
import org.postgresql.largeobject.LargeObjectManager;

public final class LargeObjects {
    private static int failures = 0;

    private static void check(String name, boolean ok, String detail) {
        if (ok) {
            System.out.println("ok " + name);
        } else {
            failures++;
            System.out.println("FAIL " + name + " " + detail);
        }
    }

    private static Connection connect(String url, String user) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", "unused-in-development-mode");
        return DriverManager.getConnection(url, props);
    }

    private static long count(Connection conn, long oid) throws SQLException {
        try (PreparedStatement st = conn.prepareStatement(
                "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata WHERE oid = ?")) {
            st.setLong(1, oid);
            try (ResultSet rs = st.executeQuery()) {
                rs.next();
                return rs.getLong(1);
            }
        }
    }

    private static void allowed(String url, String user) throws Exception {
        byte[] payload = new byte[100_000];
        for (int i = 0; i < payload.length; i++) {
            payload[i] = (byte) (i * 31);
        }
        try (Connection conn = connect(url, user)) {
            conn.setAutoCommit(false);
            LargeObjectManager lom = conn.unwrap(PGConnection.class).getLargeObjectAPI();
            long oid = lom.createLO(LargeObjectManager.READWRITE);
            LargeObject obj = lom.open(oid, LargeObjectManager.WRITE);
            obj.write(payload);
            obj.close();
            conn.commit();
            check("createLO + write", count(conn, oid) == 1, "oid " + oid);
            obj = lom.open(oid, LargeObjectManager.READ);
            obj.seek(10);
            check("seek + tell", obj.tell() == 10, "tell " + obj.tell());
            obj.seek(0);
            byte[] back = obj.read(payload.length + 10);
            obj.close();
            check("read back", Arrays.equals(back, payload), back.length + " bytes");
            lom.delete(oid);
            conn.commit();
            check("delete", count(conn, oid) == 0, "still there");
        }
    }

    private static void denied(String url, String user) throws Exception {
        try (Connection conn = connect(url, user)) {
            conn.setAutoCommit(false);
            LargeObjectManager lom = conn.unwrap(PGConnection.class).getLargeObjectAPI();
            try {
                lom.createLO(LargeObjectManager.READWRITE);
                check("createLO refused", false, "createLO succeeded");
            } catch (SQLException e) {
                check("createLO refused", "42501".equals(e.getSQLState())
                        && e.getMessage().contains("builtin.dangerous_function"),
                        e.getSQLState() + " " + e.getMessage());
            }
            conn.rollback();
            try (ResultSet rs = conn.createStatement().executeQuery("SELECT 1")) {
                rs.next();
                check("usable after refusal", rs.getInt(1) == 1, "");
            }
        }
    }

    public static void main(String[] args) {
        String url = args[0];
        try {
            allowed(url, args[1]);
        } catch (Exception e) {
            check("allowed user", false, e.toString());
        }
        try {
            denied(url, args[2]);
        } catch (Exception e) {
            check("denied user", false, e.toString());
        }
        if (failures > 0) {
            System.exit(1);
        }
        System.out.println("all large object checks passed");
    }
}
