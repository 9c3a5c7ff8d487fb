#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Warren

/// Where the job-state store is: `redis://[[user]:password@]host[:port][/db][?timeout=ms]`
/// (Valkey speaks the same). A one-part user-info (`redis://secret@host`) is the password, as
/// `redis-cli -u` reads it. TLS (`rediss://`) is refused: Debian's hiredis 0.14 has none.
package struct RedisURL: Sendable, Equatable, CustomStringConvertible {
    package var host: String
    package var port: Int
    /// ACL user (Redis 6+); nil authenticates with the password alone (`requirepass`).
    package var user: String?
    package var password: String?
    package var database: Int
    /// Bounds connecting and every read and write.
    package var timeout: Duration

    package init(_ text: String) throws(RedisError) {
        guard let components = URLComponents(string: text.trimmingWhitespace), let scheme = components.scheme?.lowercased() else {
            throw .invalid("it is not a URL")
        }
        guard scheme == "redis" else {
            throw .invalid(scheme == "rediss"
                ? "rediss:// (TLS) is not supported: use redis:// on a private network or through a TLS tunnel"
                : "scheme '\(scheme)' is not redis")
        }
        host = components.host.flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1"
        port = components.port ?? 6379
        guard (1...65_535).contains(port) else { throw .invalid("port \(port) is out of range 1-65535") }
        func decoded(_ text: String?, _ part: String) throws(RedisError) -> String? {
            guard let text, !text.isEmpty else { return nil }
            guard let decoded = text.percentDecoded else { throw .invalid("the \(part) is not percent-encoded UTF-8") }
            return decoded
        }
        user = try decoded(components.percentEncodedUser, "user")
        password = try decoded(components.percentEncodedPassword, "password")
        if password == nil, let info = text.urlUserInfo, !text[info].contains(":") {
            // `redis://secret@host`: the password alone.
            (user, password) = (nil, user)
        }
        let path = components.percentEncodedPath.drop { $0 == "/" }
        if path.isEmpty {
            database = 0
        } else {
            guard path.count <= 5, let number = Int(path), (0...65_535).contains(number) else {
                throw .invalid("the database '\(path)' is not a number from 0 to 65535")
            }
            database = number
        }
        timeout = .seconds(2)
        for item in components.queryItems ?? [] {
            switch item.name {
            case "timeout":
                guard let value = item.value, value.count <= 7, let millis = Int(value), (1...600_000).contains(millis) else {
                    throw .invalid("timeout must be milliseconds from 1 to 600000, not '\(item.value ?? "")'")
                }
                timeout = .milliseconds(millis)
            default:
                throw .invalid("unknown option '\(item.name)' in the Redis URL (known: timeout)")
            }
        }
    }

    package var description: String {
        let credentials = user.map { "\($0):***@" } ?? (password == nil ? "" : "***@")
        return "redis://\(credentials)\(host):\(port)/\(database)"
    }

    /// The URL's text with any password replaced by `***` (`user:***@`; `***@` for a one-part
    /// user-info, which is the password), also when it does not parse.
    package static func redacted(_ text: String) -> String { text.urlPasswordHidden }
}
