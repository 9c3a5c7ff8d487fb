/// Everything that can go wrong talking to RabbitMQ, with the server's or the library's own words.
public enum AMQPError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The TCP (or TLS) connection could not be made.
    case unreachable(host: String, port: Int, reason: String)
    /// rabbitmq-c reported a status (socket error, timeout, bad frame …).
    case library(status: Int32, text: String, during: String)
    /// The server closed the channel (soft error): the connection lives on.
    case channelClosed(code: UInt16, text: String, during: String)
    /// The server closed the connection.
    case connectionClosed(code: UInt16, text: String, during: String)
    /// Login refused: wrong user, password or vhost.
    case accessRefused(String)
    /// The URL cannot be used.
    case invalidURL(String)
    /// A queue exists with arguments other than the ones Warren declares.
    case conflictingQueue(queue: String, detail: String)
    /// The broker refused a published message (publisher confirm `nack`, e.g. a full queue with
    /// `reject-publish` overflow).
    case publishRefused(String)
    /// Something the worker declares is missing (a tool that only checks found no queue).
    case missingTopology(String)
    /// A mandatory message had no queue to go to.
    case unroutable(exchange: String, routingKey: String, text: String)
    /// The connection is closed, or closing.
    case closed

    public var description: String {
        switch self {
        case let .unreachable(host, port, reason): "cannot reach RabbitMQ at \(host):\(port): \(reason)"
        case let .library(status, text, during): "\(during): \(text) (rabbitmq-c status \(status))"
        case let .channelClosed(code, text, during): "\(during): the server closed the channel: \(code) \(text)"
        case let .connectionClosed(code, text, during): "\(during): the server closed the connection: \(code) \(text)"
        case let .accessRefused(text): "RabbitMQ refused the login: \(text)"
        case let .invalidURL(text): "invalid broker URL: \(text)"
        case let .conflictingQueue(queue, detail): "queue '\(queue)' exists with other arguments: \(detail)"
        case let .publishRefused(text): "RabbitMQ refused the message: \(text)"
        case let .missingTopology(text): text
        case let .unroutable(exchange, key, text): "no queue is bound to exchange '\(exchange)' with routing key '\(key)': \(text)"
        case .closed: "the connection to RabbitMQ is closed"
        }
    }

    /// Whether the connection is gone (reconnect), as opposed to a channel-level or caller's error.
    public var isConnectionLoss: Bool {
        switch self {
        case .unreachable, .library, .connectionClosed, .closed: true
        default: false
        }
    }
}
