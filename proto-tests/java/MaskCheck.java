// Column masks through pgward with pgjdbc (proto-tests/tests/masking.rs): a statement and a
// PreparedStatement past prepareThreshold (a named server-side statement, binary transfer
// of numeric and date), every masked value arrives masked; a filter on one is refused.
import java.math.BigDecimal;
import java.sql.*;

public class MaskCheck {
    static final String[] SECRETS = {"123-45-6789", "alice.secret", "98765", "1971-02-03", "bob.secret"};

    static void clean(String what, String text) {
        for (String s : SECRETS) {
            if (text != null && text.contains(s)) {
                throw new AssertionError(what + ": secret leaked: " + text);
            }
        }
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0], args[1], "unused")) {
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("SELECT id, name, email, ssn, salary, birth FROM customers ORDER BY id")) {
                while (rs.next()) {
                    for (int i = 1; i <= 6; i++) clean("statement", rs.getString(i));
                    if (!rs.getString(3).startsWith("****@")) throw new AssertionError(rs.getString(3));
                }
            }
            System.out.println("ok statement");
            try (PreparedStatement ps = c.prepareStatement("SELECT email, salary, birth, ssn FROM customers WHERE id = ?")) {
                for (int n = 0; n < 8; n++) {
                    ps.setInt(1, 1 + n % 3);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        clean("prepared", rs.getString(1) + rs.getString(2) + rs.getString(3) + rs.getString(4));
                        if (!rs.getString(1).startsWith("****@")) throw new AssertionError(rs.getString(1));
                        if (rs.getBigDecimal(2).compareTo(BigDecimal.ZERO) != 0) throw new AssertionError(rs.getBigDecimal(2));
                        if (rs.getDate(3) != null) throw new AssertionError(rs.getDate(3));
                        if (rs.getString(4).length() != 32) throw new AssertionError(rs.getString(4));
                    }
                }
            }
            System.out.println("ok prepared x8");
            try (PreparedStatement ps = c.prepareStatement("SELECT id FROM customers WHERE salary > ?")) {
                ps.setInt(1, 1000);
                ps.executeQuery();
                throw new AssertionError("a filter on a masked column ran");
            } catch (SQLException e) {
                if (!"42501".equals(e.getSQLState())) throw e;
            }
            System.out.println("ok denied filter");
        }
        System.out.println("all jdbc mask checks passed");
    }
}
