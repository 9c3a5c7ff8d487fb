#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Warren

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

    /// Every query option the parser accepts, with what it takes (`warren config keys` lists them).
    public static let queryOptions: [(name: String, help: String)] = [
        ("heartbeat", "seconds between heartbeats, 0 to 3600 (default 10; 0 turns them off)"),
        ("connection_timeout", "milliseconds to wait for the TCP connection, 1 to 3600000 (default 10000)"),
        ("cacertfile", "amqps: a CA bundle (PEM) to verify the server with"),
        ("verify", "amqps: false to skip verifying the server's certificate and name (default true)"),
    ]

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
        guard host.allSatisfy({ $0.isLetter || $0.isNumber || "-._:[]%".contains($0) }) else {
            throw .invalidURL("""
                '\(host)' is not a host name; several brokers are given as whole URLs separated by commas \
                (amqp://user@node1:5672/,amqp://user@node2:5672/)
                """)
        }
        port = components.port ?? (tls ? 5671 : 5672)
        guard (1...65_535).contains(port) else { throw .invalidURL("port \(port) is out of range") }
        func decoded(_ text: some StringProtocol, _ part: String) throws(AMQPError) -> String {
            guard let decoded = text.percentDecoded else { throw .invalidURL("the \(part) is not percent-encoded UTF-8 (a % must start an escape such as %25)") }
            return decoded
        }
        user = try components.percentEncodedUser.map { (text) throws(AMQPError) in try decoded(text, "user") } ?? "guest"
        password = try components.percentEncodedPassword.map { (text) throws(AMQPError) in try decoded(text, "password") } ?? "guest"
        let path = components.percentEncodedPath
        guard !path.contains(where: { ", ;".contains($0) }) else {
            throw .invalidURL("""
                the vhost '\(path.dropFirst())' holds a comma, semicolon or space: percent-encode it (%2C, %3B, %20); \
                several brokers are given as whole URLs separated by commas
                """)
        }
        if path.isEmpty || path == "/" {
            vhost = "/"
        } else {
            vhost = try decoded(path.dropFirst(), "vhost")
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
                guard let millis = Double(value), millis > 0, millis <= 3_600_000 else {
                    throw .invalidURL("connection_timeout must be 1 to 3600000 milliseconds, got '\(value)'")
                }
                connectTimeout = millis / 1_000
            case "cacertfile": caCertificate = value
            case "verify": verifyPeer = !["false", "0", "verify_none"].contains(value.lowercased())
            default:
                throw .invalidURL("unknown query option '\(item.name)'; known: \(Self.queryOptions.map(\.name).joined(separator: ", "))")
            }
        }
    }

    /// Several URLs separated by commas (`amqp://a:5672/,amqp://b:5672/`): the nodes of one
    /// cluster, tried in order. A comma splits only where the next URL's scheme follows, so a
    /// password holding a comma stays whole.
    /// Every address names the same vhost (the nodes of one cluster share them); one without
    /// user-info takes the first one's user and password.
    public static func list(_ text: String) throws(AMQPError) -> [AMQPURL] {
        guard !text.trimmingWhitespace.isEmpty else { throw .invalidURL("the broker URL is empty") }
        var parts: [Substring] = []
        var start = text.startIndex
        for comma in text.indices where text[comma] == "," {
            let after = text[text.index(after: comma)...].drop { $0 == " " }.prefix(8).lowercased()
            guard after.hasPrefix("amqp://") || after.hasPrefix("amqps://") else { continue }
            parts.append(text[start..<comma])
            start = text.index(after: comma)
        }
        parts.append(text[start...])
        var urls: [AMQPURL] = []
        for part in parts {
            // A comma not followed by a URL ends an address only when nothing follows it.
            let trimmed = part.trimmingWhitespace
            guard !trimmed.isEmpty, !trimmed.hasSuffix(",") else {
                throw .invalidURL("an empty address in the list '\(redacted(text))'; separate whole URLs with single commas")
            }
            var url = try AMQPURL(trimmed)
            if let first = urls.first {
                guard url.vhost == first.vhost else {
                    throw .invalidURL("the addresses name different vhosts ('\(first.vhost)' and '\(url.vhost)'): the nodes of one cluster share their vhosts")
                }
                if userInfo(in: trimmed) == nil {
                    url.user = first.user
                    url.password = first.password
                }
            }
            urls.append(url)
        }
        return urls
    }

    /// The URL with the password hidden, for logs and errors.
    public var description: String {
        "\(tls ? "amqps" : "amqp")://\(user):***@\(host):\(port)/\(vhost == "/" ? "" : vhost)?heartbeat=\(heartbeat)"
    }

    /// `text` with the password of its user-info hidden (`user:***@`; `***@` when the user-info
    /// is one part), also when it does not parse: everything up to the last `@` before the query
    /// counts as user-info, so a password holding `:`, `/` or `@` is hidden whole.
    public static func redacted(_ text: String) -> String { text.urlPasswordHidden }

    /// Where the user-info of a URL's text is (before its last `@` ahead of the query), parsed or not.
    public static func userInfo(in text: String) -> Range<String.Index>? { text.urlUserInfo }
}
