#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
import Warren
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value in an AMQP field table (message headers, queue arguments).
public enum AMQPValue: Sendable, Equatable, CustomStringConvertible {
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case bytes([UInt8])
    case timestamp(Date)
    case array([AMQPValue])
    case table([String: AMQPValue])
    case decimal(scale: UInt8, value: UInt32)
    case void

    public var description: String {
        switch self {
        case let .bool(value): "\(value)"
        case let .int(value): "\(value)"
        case let .double(value): "\(value)"
        case let .string(value): value
        case let .bytes(value): "<\(value.count) bytes>"
        // Foundation describes years 1970…9999 only, and traps on NaN.
        case let .timestamp(value) where (0...253_402_300_799).contains(value.timeIntervalSince1970): "\(value)"
        case let .timestamp(value): "timestamp \(value.timeIntervalSince1970) s"
        case let .array(value): "\(value)"
        case let .table(value): "\(value)"
        case let .decimal(scale, value): "\(Double(value) / pow(10, Double(scale)))"
        case .void: "void"
        }
    }

    /// The value as text, for headers written as strings by some clients and as numbers by others.
    public var stringValue: String? {
        switch self {
        case let .string(value): value
        case let .bytes(value): String(validating: value, as: UTF8.self)
        case let .int(value): String(value)
        default: nil
        }
    }

    /// An AMQP integer of any width (signed or unsigned, 8 to 64 bits): the documented type of
    /// Warren's int headers. Strings and doubles are not integers here.
    public var integer: Int64? {
        if case let .int(value) = self { value } else { nil }
    }

    /// An AMQP string, or a byte array that is valid UTF-8 (some clients send text that way): the
    /// documented type of Warren's string headers. Numbers are not text here.
    public var text: String? {
        switch self {
        case let .string(value): value
        case let .bytes(value): String(validating: value, as: UTF8.self)
        default: nil
        }
    }

    /// The value as an integer, accepting integral doubles and decimal strings (for tools reading
    /// headers leniently; `WireFormat.decode` uses `integer`).
    public var intValue: Int64? {
        switch self {
        case let .int(value): value
        case let .double(value) where value.rounded() == value && abs(value) < 9e18: Int64(value)
        case let .string(value): Int64(value.trimmingWhitespace)
        case let .bytes(value): String(validating: value, as: UTF8.self).flatMap { Int64($0) }
        default: nil
        }
    }
}

/// The properties of a message (AMQP 0-9-1 basic class).
public struct MessageProperties: Sendable, Equatable {
    public var contentType: String?
    public var contentEncoding: String?
    public var headers: [String: AMQPValue]
    public var deliveryMode: UInt8?
    public var priority: UInt8?
    public var correlationID: String?
    public var replyTo: String?
    public var expiration: String?
    public var messageID: String?
    public var timestamp: Date?
    public var type: String?
    public var userID: String?
    public var appID: String?

    public init(
        contentType: String? = nil, contentEncoding: String? = nil, headers: [String: AMQPValue] = [:],
        deliveryMode: UInt8? = nil, priority: UInt8? = nil, correlationID: String? = nil, replyTo: String? = nil,
        expiration: String? = nil, messageID: String? = nil, timestamp: Date? = nil, type: String? = nil,
        userID: String? = nil, appID: String? = nil
    ) {
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.headers = headers
        self.deliveryMode = deliveryMode
        self.priority = priority
        self.correlationID = correlationID
        self.replyTo = replyTo
        self.expiration = expiration
        self.messageID = messageID
        self.timestamp = timestamp
        self.type = type
        self.userID = userID
        self.appID = appID
    }
}

/// A message as it came off the wire, copied out of rabbitmq-c's buffers.
///
/// A class: a message passes from the I/O thread through decoding, the dedup bookkeeping and
/// settlement, and every copy of a struct holding this many references (the properties' strings,
/// their headers, the body) cost some twenty reference-count operations.
public final class IncomingMessage: Sendable {
    public let deliveryTag: UInt64
    public let redelivered: Bool
    public let exchange: String
    public let routingKey: String
    public let consumerTag: String
    public let properties: MessageProperties
    public let body: [UInt8]

    init(
        deliveryTag: UInt64, redelivered: Bool, exchange: String, routingKey: String, consumerTag: String,
        properties: MessageProperties, body: [UInt8]
    ) {
        self.deliveryTag = deliveryTag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routingKey = routingKey
        self.consumerTag = consumerTag
        self.properties = properties
        self.body = body
    }
}

/// A message to publish.
public struct OutgoingMessage: Sendable {
    public var exchange: String
    public var routingKey: String
    public var properties: MessageProperties
    public var body: [UInt8]
    /// Ask the broker to return the message when no queue takes it.
    public var mandatory: Bool

    public init(exchange: String, routingKey: String, properties: MessageProperties = MessageProperties(), body: [UInt8], mandatory: Bool = false) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
        self.body = body
        self.mandatory = mandatory
    }
}
