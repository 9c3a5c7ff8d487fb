import Foundation

/// Where and how to connect: `amqp://user:password@host:port/vhost?heartbeat=10`, or `amqps://` for TLS.
public struct AMQPURL: Sendable, Equatable, CustomStringConvertible {
    public var tls: Bool
    public var host: String
    public var port: Int
    public var user: String
    public var password: String
    public var vhost: String
    /// Seconds between heartbeats; 0 turns them off.
    public var heartbeat: Int
    public var connectTimeout: Double
    /// TLS: a CA bundle to verify the server with (`cacertfile=` in the query).
    public var caCertificate: String?
    /// TLS: verify the server's certificate and name (`verify=false` in the query to turn off).
    public var verifyPeer: Bool

    public init(_ text: String) throws(AMQPError) {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased() else {
            throw .invalidURL("'\(Self.redacted(text))' is not a URL")
        }
        switch scheme {
        case "amqp": tls = false
        case "amqps": tls = true
        default: throw .invalidURL("scheme '\(scheme)' is not amqp or amqps")
        }
        host = components.host.flatMap { $0.isEmpty ? nil : $0 } ?? "localhost"
        port = components.port ?? (tls ? 5671 : 5672)
        guard (1...65_535).contains(port) else { throw .invalidURL("port \(port) is out of range") }
        user = components.percentEncodedUser.flatMap { $0.removingPercentEncoding } ?? "guest"
        password = components.percentEncodedPassword.flatMap { $0.removingPercentEncoding } ?? "guest"
        let path = components.percentEncodedPath
        if path.isEmpty || path == "/" {
            vhost = "/"
        } else {
            vhost = String(path.dropFirst()).removingPercentEncoding ?? String(path.dropFirst())
        }
        heartbeat = 10
        connectTimeout = 10
        caCertificate = nil
        verifyPeer = true
        for item in components.queryItems ?? [] {
            let value = item.value ?? ""
            switch item.name {
            case "heartbeat":
                guard let seconds = Int(value), (0...3_600).contains(seconds) else {
                    throw .invalidURL("heartbeat must be 0 to 3600 seconds, got '\(value)'")
                }
                heartbeat = seconds
            case "connection_timeout":
                guard let millis = Double(value), millis > 0 else {
                    throw .invalidURL("connection_timeout must be a positive number of milliseconds, got '\(value)'")
                }
                connectTimeout = millis / 1_000
            case "cacertfile": caCertificate = value
            case "verify": verifyPeer = !["false", "0", "verify_none"].contains(value.lowercased())
            default: break
            }
        }
    }

    /// The URL with the password hidden, for logs and errors.
    public var description: String {
        "\(tls ? "amqps" : "amqp")://\(user):***@\(host):\(port)/\(vhost == "/" ? "" : vhost)?heartbeat=\(heartbeat)"
    }

    static func redacted(_ text: String) -> String {
        text.replacingOccurrences(of: #":[^:@/]*@"#, with: ":***@", options: .regularExpression)
    }
}
