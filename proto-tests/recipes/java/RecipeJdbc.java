import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

/**
 * Drives the JDBC recipe from docs/clients.md (the EntraTokenPlugin class and URL, extracted
 * by client_recipes.rs): opens connections through pgward with the plugin, reads rows, and
 * expects 42501 for a denied statement. Args: URL USER LABEL CONNECTIONS.
 */
public final class RecipeJdbc {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        int connections = Integer.parseInt(args[3]);
        for (int i = 0; i < connections; i++) {
            try (Connection c = DriverManager.getConnection(url, props);
                    Statement s = c.createStatement()) {
                try (ResultSet rs = s.executeQuery("SELECT count(*) FROM orders")) {
                    rs.next();
                    if (rs.getInt(1) != 100) {
                        throw new AssertionError("count " + rs.getInt(1));
                    }
                }
                try {
                    s.executeUpdate("INSERT INTO orders (item, qty) VALUES ('recipe-denied', 1)");
                    throw new AssertionError("denied statement succeeded");
                } catch (SQLException e) {
                    if (!"42501".equals(e.getSQLState())) {
                        throw new AssertionError("SQLSTATE " + e.getSQLState() + ": " + e.getMessage());
                    }
                }
                try (ResultSet rs = s.executeQuery("SELECT 1")) {
                    rs.next();
                }
            }
        }
        System.out.println("ok " + args[2] + ": " + connections + " connections, rows, 42501 on a denied INSERT");
    }
}
