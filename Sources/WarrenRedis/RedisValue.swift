/// A reply from Redis (RESP2, what hiredis 0.14 reads).
package enum RedisValue: Sendable, Equatable {
    /// A bulk string: bytes, binary-safe.
    case bulk([UInt8])
    /// A simple status such as `OK`.
    case status(String)
    /// An error reply, such as `WRONGTYPE Operation against a key holding the wrong kind of value`.
    case error(String)
    case integer(Int64)
    case array([RedisValue])
    /// A nil bulk string or array (a missing key).
    case null

    /// The value as text: a bulk string as UTF-8, a status, or an integer written out; nil otherwise.
    package var text: String? {
        switch self {
        case let .bulk(bytes): String(decoding: bytes, as: UTF8.self)
        case let .status(text): text
        case let .integer(value): "\(value)"
        default: nil
        }
    }

    package var integer: Int64? {
        switch self {
        case let .integer(value): value
        case let .bulk(bytes): Int64(String(decoding: bytes, as: UTF8.self))
        default: nil
        }
    }
}

/// What can go wrong talking to Redis.
package enum RedisError: Error, Equatable, CustomStringConvertible {
    /// The connection failed or was lost (the command may or may not have run).
    case connection(String)
    /// Not connected now (the client is reconnecting): the command was not sent.
    case unavailable(String)
    /// Redis answered with an error.
    case reply(String)
    /// The URL or an argument is not acceptable.
    case invalid(String)
    /// The client was closed.
    case closed

    package var description: String {
        switch self {
        case let .connection(why): "Redis connection: \(why)"
        case let .unavailable(why): "Redis unavailable: \(why)"
        case let .reply(text): "Redis: \(text)"
        case let .invalid(why): why
        case .closed: "the Redis client is closed"
        }
    }
}

/// An argument of a command: text or bytes.
package protocol RedisArgument {
    var redisBytes: [UInt8] { get }
}

extension String: RedisArgument {
    package var redisBytes: [UInt8] { Array(utf8) }
}

extension Substring: RedisArgument {
    package var redisBytes: [UInt8] { Array(utf8) }
}

extension Array: RedisArgument where Element == UInt8 {
    package var redisBytes: [UInt8] { self }
}

extension Int: RedisArgument {
    package var redisBytes: [UInt8] { Array("\(self)".utf8) }
}

extension Int64: RedisArgument {
    package var redisBytes: [UInt8] { Array("\(self)".utf8) }
}

/// One command: its name and arguments, as sent.
package struct RedisCommand: Sendable {
    package let arguments: [[UInt8]]

    package init(_ name: String, _ arguments: any RedisArgument...) {
        self.arguments = [Array(name.utf8)] + arguments.map(\.redisBytes)
    }

    package init(_ name: String, arguments: [any RedisArgument]) {
        self.arguments = [Array(name.utf8)] + arguments.map(\.redisBytes)
    }
}
