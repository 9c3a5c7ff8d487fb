package import WarrenIO
// The one layer that touches rabbitmq-c: unsafe pointers, C status codes and RPC replies stay in
// this file; everything leaves it as Swift values and typed `AMQPError`s.
import CRabbitMQ
import CWarrenAMQP
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// Method ids (the C macros carry casts, which Swift does not import).
enum Method {
    static let connectionClose: UInt32 = 0x000A_0032
    static let connectionBlocked: UInt32 = 0x000A_003C
    static let connectionUnblocked: UInt32 = 0x000A_003D
    static let channelClose: UInt32 = 0x0014_0028
    static let basicCancel: UInt32 = 0x003C_001E
    static let basicReturn: UInt32 = 0x003C_0032
    static let basicAck: UInt32 = 0x003C_0050
    static let basicNack: UInt32 = 0x003C_0078
    static let exchangeDeclare: UInt32 = 0x0028_000A
    static let exchangeDeclareOk: UInt32 = 0x0028_000B
    static let exchangeBind: UInt32 = 0x0028_001E
    static let exchangeBindOk: UInt32 = 0x0028_001F
    static let queueDeclare: UInt32 = 0x0032_000A
    static let queueDeclareOk: UInt32 = 0x0032_000B
    static let queueBind: UInt32 = 0x0032_0014
    static let queueBindOk: UInt32 = 0x0032_0015
}

/// One object of the topology, declared idempotently (durable; a queue with its arguments).
enum Declaration: Equatable {
    case exchange(String, type: String)
    case queue(String, arguments: [String: AMQPValue])
    case bindQueue(String, exchange: String, routingKey: String)
    case bindExchange(String, source: String, routingKey: String)
}

/// What a non-blocking look at the connection found.
package enum Incoming {
    case message(IncomingMessage)
    /// Nothing is waiting.
    case nothing
    /// A frame other than a delivery is next: read it with `readFrame()`.
    case frameWaiting
}

/// A non-delivery frame.
package enum ControlFrame: Equatable {
    case confirmAck(tag: UInt64, multiple: Bool)
    case confirmNack(tag: UInt64, multiple: Bool)
    case returned(code: UInt16, text: String, exchange: String, routingKey: String, messageID: String?)
    case consumerCancelled(String)
    case blocked(String)
    case unblocked
    case other(UInt32)
    case none
}

/// One rabbitmq-c connection with one channel. Not thread-safe: exactly one thread owns it.
package final class RawConnection {
    private let state: amqp_connection_state_t
    let channel: amqp_channel_t = 1
    let url: AMQPURL
    private(set) var isOpen = false
    private(set) var channelOpen = false
    /// Goes up each time the channel is opened: whoever set the channel up can tell it is new.
    private(set) var channelSerial = 0
    /// Strings every delivery carries again (exchange, routing key, consumer tag, content type, type).
    private var recurring = RecurringStrings()
    /// Messages decoded since the pools were last recycled (see `poll`).
    private var decodedSinceRecycle = 0
    private static let messagesPerRecycle = 256

    /// The broker's version (`server-properties.version` of `connection.start`), e.g. 4.0.5.
    private(set) var serverVersion = BrokerVersion(major: 0, minor: 0, patch: 0)

    /// What the client tells the broker at login. RabbitMQ sends `basic.cancel` when it cancels a
    /// consumer (its queue was deleted, or its node went down) only to clients that announce
    /// `consumer_cancel_notify`; the others are what every RabbitMQ client announces.
    static func clientProperties(name: String) -> [String: AMQPValue] {
        [
            "product": .string("Warren"),
            "platform": .string("Swift"),
            "connection_name": .string(name),
            "capabilities": .table([
                "publisher_confirms": .bool(true),
                "exchange_exchange_bindings": .bool(true),
                "basic.nack": .bool(true),
                "consumer_cancel_notify": .bool(true),
                "connection.blocked": .bool(true),
                "authentication_failure_close": .bool(true),
            ]),
        ]
    }

    /// Every synchronous call (declare, consume, close) waits at most this long for its reply:
    /// a broker that stops answering (half-open connection, blocked) fails the call instead of
    /// holding the I/O thread.
    static let replyTimeout: Double = 15

    package init(url: AMQPURL, name: String = "warren") throws(AMQPError) {
        self.url = url
        guard let state = amqp_new_connection() else {
            throw .library(status: -1, text: "out of memory", during: "creating a connection")
        }
        self.state = state
        let socket: OpaquePointer?
        if url.tls {
            socket = amqp_ssl_socket_new(state)
            if let socket {
                amqp_ssl_socket_set_verify_peer(socket, url.verifyPeer ? 1 : 0)
                amqp_ssl_socket_set_verify_hostname(socket, url.verifyPeer ? 1 : 0)
                if let ca = url.caCertificate, amqp_ssl_socket_set_cacert(socket, ca) != 0 {
                    throw .unreachable(host: url.host, port: url.port, reason: "cannot read CA certificate file '\(ca)'")
                }
            }
        } else {
            socket = amqp_tcp_socket_new(state)
        }
        // From here on a throw runs deinit, which destroys the connection state.
        guard let socket else {
            throw .library(status: -1, text: "cannot create a socket", during: "connecting to \(url.host):\(url.port)")
        }
        var timeout = timeval(tv_sec: Int(url.connectTimeout), tv_usec: Int((url.connectTimeout.truncatingRemainder(dividingBy: 1)) * 1e6))
        let status = amqp_socket_open_noblock(socket, url.host, Int32(url.port), &timeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            // rabbitmq-c loses errno on a refused connection: say where we tried to go.
            throw .unreachable(host: url.host, port: url.port, reason: Self.text(status))
        }
        setReplyTimeout(Self.replyTimeout)
        let arena = Arena()
        var properties = arena.table(Self.clientProperties(name: name))
        let login = CWarrenAMQP_login_plain_properties(
            state, url.vhost, 0, 131_072, Int32(url.heartbeat), &properties, url.user, url.password)
        do {
            try check(login, "logging in to \(url.host):\(url.port) as '\(url.user)' on vhost '\(url.vhost)'")
        } catch {
            if case let .library(status, text, _) = error, status == AMQP_STATUS_SOCKET_CLOSED.rawValue || status == AMQP_STATUS_CONNECTION_CLOSED.rawValue {
                throw .accessRefused("the server closed the connection during login (\(text)); check the user, password and vhost")
            }
            if case let .connectionClosed(code, text, _) = error, code == 403 || code == 530 {
                throw .accessRefused(text)
            }
            throw error
        }
        isOpen = true
        if let server = amqp_get_server_properties(state), case let .string(version)? = Self.table(server.pointee)["version"] {
            serverVersion = BrokerVersion(version)
        }
        try openChannel()
    }

    /// Bounds the wait for the reply of every synchronous call from now on.
    func setReplyTimeout(_ seconds: Double) {
        var timeout = timeval(tv_sec: Int(seconds), tv_usec: Int(seconds.truncatingRemainder(dividingBy: 1) * 1e6))
        _ = amqp_set_rpc_timeout(state, &timeout)
    }

    deinit {
        if isOpen {
            _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        }
        amqp_destroy_connection(state)
    }

    func openChannel() throws(AMQPError) {
        amqp_channel_open(state, channel)
        try check(amqp_get_rpc_reply(state), "opening channel \(channel)")
        channelOpen = true
        channelSerial += 1
    }

    /// The socket, for `poll`.
    package var socketDescriptor: Int32 { amqp_socket_get_sockfd(amqp_get_socket(state)) }

    /// Whether rabbitmq-c already holds data or frames that a poll on the socket would not see.
    var hasBufferedInput: Bool { amqp_frames_enqueued(state) != 0 || amqp_data_in_buffer(state) != 0 }

    var heartbeat: Int { Int(amqp_get_heartbeat(state)) }

    package func close() {
        guard isOpen else { return }
        if channelOpen { _ = amqp_channel_close(state, channel, AMQP_REPLY_SUCCESS) }
        _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        isOpen = false
        channelOpen = false
    }

    // MARK: Topology

    func declareExchange(_ name: String, type: String, durable: Bool = true) throws(AMQPError) {
        let arena = Arena()
        amqp_exchange_declare(state, channel, arena.bytes(name), arena.bytes(type), 0, durable ? 1 : 0, 0, 0, amqp_empty_table)
        try check(amqp_get_rpc_reply(state), "declaring exchange '\(name)'")
    }

    /// Declares a durable queue, or with `exclusive` a transient one that only this connection may
    /// use and that goes with it (another connection's declaration is refused, 405); `passive` only
    /// checks that it exists. Returns its message and consumer counts.
    @discardableResult
    package func declareQueue(
        _ name: String, arguments: [String: AMQPValue] = [:], passive: Bool = false, exclusive: Bool = false
    ) throws(AMQPError) -> (messages: Int, consumers: Int) {
        let arena = Arena()
        let ok = amqp_queue_declare(
            state, channel, arena.bytes(name), passive ? 1 : 0, exclusive ? 0 : 1, exclusive ? 1 : 0, 0, arena.table(arguments))
        try check(amqp_get_rpc_reply(state), "\(passive ? "checking" : "declaring") queue '\(name)'")
        guard let ok else { return (0, 0) }
        return (Int(ok.pointee.message_count), Int(ok.pointee.consumer_count))
    }

    func bindQueue(_ queue: String, exchange: String, routingKey: String) throws(AMQPError) {
        let arena = Arena()
        amqp_queue_bind(state, channel, arena.bytes(queue), arena.bytes(exchange), arena.bytes(routingKey), amqp_empty_table)
        try check(amqp_get_rpc_reply(state), "binding queue '\(queue)' to '\(exchange)' with key '\(routingKey)'")
    }

    /// Routes messages from exchange `source` on to exchange `destination` (a RabbitMQ extension).
    func bindExchange(_ destination: String, to source: String, routingKey: String) throws(AMQPError) {
        let arena = Arena()
        amqp_exchange_bind(state, channel, arena.bytes(destination), arena.bytes(source), arena.bytes(routingKey), amqp_empty_table)
        try check(amqp_get_rpc_reply(state), "binding exchange '\(destination)' to '\(source)' with key '\(routingKey)'")
    }

    /// Declares everything at once: every method is sent, then every reply read, so a topology
    /// that exists already costs one round trip instead of one per object. The first refusal
    /// closes the channel (later methods are ignored by the broker) and is thrown as
    /// `channelClosed` with the broker's text; the channel is then closed.
    func declare(_ batch: [Declaration]) throws(AMQPError) {
        let arena = Arena()
        var expected: [UInt32] = []
        expected.reserveCapacity(batch.count)
        for declaration in batch {
            let sent: Int32
            switch declaration {
            case let .exchange(name, type):
                var method = amqp_exchange_declare_t(
                    ticket: 0, exchange: arena.bytes(name), type: arena.bytes(type), passive: 0, durable: 1, auto_delete: 0,
                    internal: 0, nowait: 0, arguments: amqp_empty_table)
                sent = amqp_send_method(state, channel, Method.exchangeDeclare, &method)
                expected.append(Method.exchangeDeclareOk)
            case let .queue(name, arguments):
                var method = amqp_queue_declare_t(
                    ticket: 0, queue: arena.bytes(name), passive: 0, durable: 1, exclusive: 0, auto_delete: 0, nowait: 0,
                    arguments: arena.table(arguments))
                sent = amqp_send_method(state, channel, Method.queueDeclare, &method)
                expected.append(Method.queueDeclareOk)
            case let .bindQueue(queue, exchange, key):
                var method = amqp_queue_bind_t(
                    ticket: 0, queue: arena.bytes(queue), exchange: arena.bytes(exchange), routing_key: arena.bytes(key), nowait: 0,
                    arguments: amqp_empty_table)
                sent = amqp_send_method(state, channel, Method.queueBind, &method)
                expected.append(Method.queueBindOk)
            case let .bindExchange(destination, source, key):
                var method = amqp_exchange_bind_t(
                    ticket: 0, destination: arena.bytes(destination), source: arena.bytes(source), routing_key: arena.bytes(key),
                    nowait: 0, arguments: amqp_empty_table)
                sent = amqp_send_method(state, channel, Method.exchangeBind, &method)
                expected.append(Method.exchangeBindOk)
            }
            try status(sent, "sending the topology's declarations")
        }
        var answered = 0
        while answered < expected.count {
            var frame = amqp_frame_t()
            var timeout = timeval(tv_sec: Int(Self.replyTimeout), tv_usec: 0)
            let read = amqp_simple_wait_frame_noblock(state, &frame, &timeout)
            try status(read, "declaring the topology")
            guard frame.frame_type == AMQP_FRAME_METHOD else {
                isOpen = false
                throw .library(status: -1, text: "unexpected frame while declaring", during: "declaring the topology")
            }
            let method = frame.payload.method
            if frame.channel == channel, method.id == expected[answered] {
                answered += 1
                continue
            }
            // connection.blocked and .unblocked (announced at login) may come in between.
            if frame.channel == 0, [Method.connectionBlocked, Method.connectionUnblocked].contains(method.id) { continue }
            try closed(by: method, during: "declaring the topology")
            isOpen = false
            throw .library(status: -1, text: "unexpected method 0x\(String(method.id, radix: 16))", during: "declaring the topology")
        }
    }

    /// Whether `queue` can be consumed now, asked on a channel of its own so that a refusal (the
    /// queue is gone, or its node is down) does not close the consuming channel.
    func queueAvailable(_ queue: String) throws(AMQPError) -> Bool {
        let probe: amqp_channel_t = 2
        amqp_channel_open(state, probe)
        try check(amqp_get_rpc_reply(state), "opening channel \(probe)")
        let arena = Arena()
        amqp_queue_declare(state, probe, arena.bytes(queue), 1, 1, 0, 0, amqp_empty_table)
        let reply = amqp_get_rpc_reply(state)
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            amqp_channel_close(state, probe, AMQP_REPLY_SUCCESS)
            try check(amqp_get_rpc_reply(state), "closing channel \(probe)")
            return true
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == Method.channelClose:
            var ok = amqp_channel_close_ok_t(dummy: 0)
            try status(amqp_send_method(state, probe, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok), "closing channel \(probe)")
            return false
        default:
            try check(reply, "checking queue '\(queue)'")
            return false
        }
    }

    /// Throws what a `channel.close` or `connection.close` from the broker says (answering it
    /// first, as the protocol asks); returns for any other method.
    private func closed(by method: amqp_method_t, during: String) throws(AMQPError) {
        switch method.id {
        case Method.channelClose:
            let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            // Answer close-ok before anything else, or the broker closes the whole connection (504).
            var ok = amqp_channel_close_ok_t(dummy: 0)
            amqp_send_method(state, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok)
            channelOpen = false
            throw .channelClosed(code: close.reply_code, text: Self.string(close.reply_text), during: during)
        case Method.connectionClose:
            let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            var ok = amqp_connection_close_ok_t(dummy: 0)
            amqp_send_method(state, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok)
            isOpen = false
            throw .connectionClosed(code: close.reply_code, text: Self.string(close.reply_text), during: during)
        default:
            return
        }
    }

    func deleteQueue(_ name: String) throws(AMQPError) {
        let arena = Arena()
        amqp_queue_delete(state, channel, arena.bytes(name), 0, 0)
        try check(amqp_get_rpc_reply(state), "deleting queue '\(name)'")
    }

    package func purgeQueue(_ name: String) throws(AMQPError) -> Int {
        let arena = Arena()
        let ok = amqp_queue_purge(state, channel, arena.bytes(name))
        try check(amqp_get_rpc_reply(state), "purging queue '\(name)'")
        return Int(ok?.pointee.message_count ?? 0)
    }

    // MARK: Consuming

    /// Per-consumer prefetch (`global = false`): each consumer may hold `count` unacked messages.
    package func setPrefetch(_ count: UInt16) throws(AMQPError) {
        amqp_basic_qos(state, channel, 0, count, 0)
        try check(amqp_get_rpc_reply(state), "setting prefetch to \(count)")
    }

    /// A server-named, exclusive queue that goes with this connection (replies).
    func declareTemporaryQueue() throws(AMQPError) -> String {
        let ok = amqp_queue_declare(state, channel, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table)
        try check(amqp_get_rpc_reply(state), "declaring a reply queue")
        guard let ok else { throw .library(status: -1, text: "no queue name in the reply", during: "declaring a reply queue") }
        return Self.string(ok.pointee.queue)
    }

    @discardableResult
    package func consume(_ queue: String, consumerTag: String, noAck: Bool = false) throws(AMQPError) -> String {
        let arena = Arena()
        let ok = amqp_basic_consume(state, channel, arena.bytes(queue), arena.bytes(consumerTag), 0, noAck ? 1 : 0, 0, amqp_empty_table)
        try check(amqp_get_rpc_reply(state), "consuming from queue '\(queue)'")
        return ok.map { Self.string($0.pointee.consumer_tag) } ?? consumerTag
    }

    /// Stops a consumer: no deliveries follow the cancel-ok (frames that arrived before it are
    /// queued by rabbitmq-c and still read by `poll`).
    func cancelConsumer(_ consumerTag: String) throws(AMQPError) {
        let arena = Arena()
        amqp_basic_cancel(state, channel, arena.bytes(consumerTag))
        try check(amqp_get_rpc_reply(state), "cancelling consumer '\(consumerTag)'")
    }

    /// Takes the next delivery if one is already here, without blocking.
    ///
    /// Decoding leaves each message's frames in the channel's memory pool until it is recycled;
    /// recycling walks rabbitmq-c's queued frames and pools (0.3 µs, a tenth of the I/O thread's
    /// time per job when done for every message), so it is done when nothing more has arrived
    /// (a burst ended; RPC replies are recycled then too) or every `messagesPerRecycle` messages,
    /// which bounds the pool to about 100 KB.
    package func poll() throws(AMQPError) -> Incoming {
        if decodedSinceRecycle >= Self.messagesPerRecycle { recycleBuffers() }
        var envelope = amqp_envelope_t()
        var zero = timeval(tv_sec: 0, tv_usec: 0)
        let reply = amqp_consume_message(state, &envelope, &zero, 0)
        if reply.reply_type == AMQP_RESPONSE_NORMAL {
            decodedSinceRecycle += 1
            defer { amqp_destroy_envelope(&envelope) }
            return .message(copy(envelope))
        }
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION {
            if reply.library_error == AMQP_STATUS_TIMEOUT.rawValue {
                recycleBuffers()
                return .nothing
            }
            if reply.library_error == AMQP_STATUS_UNEXPECTED_STATE.rawValue { return .frameWaiting }
        }
        try check(reply, "receiving")
        return .nothing
    }

    /// `amqp_maybe_release_buffers` recycles the pool of every channel that has one, and for each
    /// walks the whole list of frames rabbitmq-c has queued (read while a reply was awaited) in
    /// search of one of that channel. Deliveries queue up there by the thousand when a large
    /// prefetch lets the broker send while the consumers are still being set up, and channel 0
    /// has none among them: at prefetch 30,000 that walk took 45 % of the I/O thread and Warren's
    /// CPU per job doubled. With frames queued, only this channel's pool is looked at (its walk
    /// stops at the first queued frame, which is its own).
    private func recycleBuffers() {
        if amqp_frames_enqueued(state) == 0 {
            amqp_maybe_release_buffers(state)
        } else {
            amqp_maybe_release_buffers_on_channel(state, channel)
        }
        decodedSinceRecycle = 0
    }

    /// Reads one waiting non-delivery frame (confirms, returns, closes). `.none` if nothing is waiting.
    package func readFrame() throws(AMQPError) -> ControlFrame {
        var frame = amqp_frame_t()
        var zero = timeval(tv_sec: 0, tv_usec: 0)
        let status = amqp_simple_wait_frame_noblock(state, &frame, &zero)
        if status == AMQP_STATUS_TIMEOUT.rawValue { return .none }
        guard status == AMQP_STATUS_OK.rawValue else {
            isOpen = false
            throw .library(status: status, text: Self.text(status), during: "reading a frame")
        }
        guard frame.frame_type == AMQP_FRAME_METHOD else { return .other(0) }
        let method = frame.payload.method
        switch method.id {
        case Method.basicAck:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            return .confirmAck(tag: ack.delivery_tag, multiple: ack.multiple != 0)
        case Method.basicNack:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            return .confirmNack(tag: nack.delivery_tag, multiple: nack.multiple != 0)
        case Method.basicReturn:
            let returned = method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let code = returned.reply_code, text = Self.string(returned.reply_text)
            let exchange = Self.string(returned.exchange), key = Self.string(returned.routing_key)
            // The returned message's content follows: read it so the stream stays in step.
            var message = amqp_message_t()
            let reply = amqp_read_message(state, channel, &message, 0)
            var messageID: String?
            if reply.reply_type == AMQP_RESPONSE_NORMAL {
                if message.properties._flags & amqp_flags_t(AMQP_BASIC_MESSAGE_ID_FLAG) != 0 {
                    messageID = Self.string(message.properties.message_id)
                }
                amqp_destroy_message(&message)
            } else {
                try check(reply, "reading a returned message")
            }
            return .returned(code: code, text: text, exchange: exchange, routingKey: key, messageID: messageID)
        case Method.basicCancel:
            let cancel = method.decoded.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            return .consumerCancelled(Self.string(cancel.consumer_tag))
        case Method.channelClose, Method.connectionClose:
            try closed(by: method, during: "consuming")
            return .other(method.id)
        case Method.connectionBlocked:
            let blocked = method.decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
            return .blocked(Self.string(blocked.reason))
        case Method.connectionUnblocked:
            return .unblocked
        default:
            return .other(method.id)
        }
    }

    /// Takes one message from a queue without a consumer (`basic.get`), or nil when it is empty.
    func get(_ queue: String, autoAck: Bool) throws(AMQPError) -> IncomingMessage? {
        let arena = Arena()
        let reply = amqp_basic_get(state, channel, arena.bytes(queue), autoAck ? 1 : 0)
        try check(reply, "getting a message from '\(queue)'")
        guard reply.reply.id == 0x003C_0047 /* basic.get-ok */, let decoded = reply.reply.decoded else { return nil }
        let ok = decoded.assumingMemoryBound(to: amqp_basic_get_ok_t.self).pointee
        var message = amqp_message_t()
        let read = amqp_read_message(state, channel, &message, 0)
        try check(read, "reading a message from '\(queue)'")
        defer { amqp_destroy_message(&message) }
        return IncomingMessage(
            deliveryTag: ok.delivery_tag, redelivered: ok.redelivered != 0, exchange: Self.string(ok.exchange),
            routingKey: Self.string(ok.routing_key), consumerTag: "", properties: Self.properties(message.properties),
            body: Self.array(message.body))
    }

    // MARK: Acks and publishing

    package func ack(_ tag: UInt64, multiple: Bool) throws(AMQPError) {
        try status(amqp_basic_ack(state, channel, tag, multiple ? 1 : 0), "acking delivery \(tag)")
    }

    /// `basic.nack`: from RabbitMQ 4.3 a quorum queue does not count a nack with requeue as a
    /// failed delivery (a reject it does).
    func nack(_ tag: UInt64, requeue: Bool) throws(AMQPError) {
        try status(amqp_basic_nack(state, channel, tag, 0, requeue ? 1 : 0), "returning delivery \(tag)")
    }

    /// Turns on publisher confirms: the broker then acks (or nacks) every publish by sequence number.
    package func selectConfirms() throws(AMQPError) {
        amqp_confirm_select(state, channel)
        try check(amqp_get_rpc_reply(state), "turning on publisher confirms")
    }

    package func publish(_ message: OutgoingMessage) throws(AMQPError) {
        let arena = Arena()
        var properties = arena.properties(message.properties)
        let result = message.body.withUnsafeBytes { body in
            amqp_basic_publish(
                state, channel, arena.bytes(message.exchange), arena.bytes(message.routingKey),
                message.mandatory ? 1 : 0, 0, &properties,
                amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress)))
        }
        try status(result, "publishing to '\(message.exchange)' with key '\(message.routingKey)'")
    }

    // MARK: Errors

    private func status(_ code: Int32, _ during: String) throws(AMQPError) {
        guard code != AMQP_STATUS_OK.rawValue else { return }
        isOpen = false
        throw .library(status: code, text: Self.text(code), during: during)
    }

    private func check(_ reply: amqp_rpc_reply_t, _ during: String) throws(AMQPError) {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            isOpen = false
            throw .library(status: reply.library_error, text: Self.text(reply.library_error), during: during)
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            try closed(by: reply.reply, during: during)
            throw .library(status: -1, text: "unexpected server method 0x\(String(reply.reply.id, radix: 16))", during: during)
        default:
            throw .library(status: -1, text: "no RPC reply", during: during)
        }
    }

    static func text(_ status: Int32) -> String { String(cString: amqp_error_string2(status)) }

    // MARK: Copying out of rabbitmq-c

    static func string(_ bytes: amqp_bytes_t) -> String {
        guard bytes.len > 0, let base = bytes.bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: base, count: bytes.len), as: UTF8.self)
    }

    static func array(_ bytes: amqp_bytes_t) -> [UInt8] {
        guard bytes.len > 0, let base = bytes.bytes else { return [] }
        return Array(UnsafeRawBufferPointer(start: base, count: bytes.len))
    }

    /// A delivery as Swift values. The fields that repeat from one delivery to the next come from
    /// `recurring`, without a new allocation and UTF-8 check each time.
    private func copy(_ envelope: amqp_envelope_t) -> IncomingMessage {
        let properties = Self.properties(envelope.message.properties, recurring: { recurring.string($0) })
        return IncomingMessage(
            deliveryTag: envelope.delivery_tag, redelivered: envelope.redelivered != 0,
            exchange: recurring.string(envelope.exchange), routingKey: recurring.string(envelope.routing_key),
            consumerTag: recurring.string(envelope.consumer_tag), properties: properties,
            body: Self.array(envelope.message.body))
    }

    /// - Parameter recurring: makes the fields that repeat across messages (content type, type).
    static func properties(
        _ p: amqp_basic_properties_t, recurring: (amqp_bytes_t) -> String = string
    ) -> MessageProperties {
        func has(_ flag: Int32) -> Bool { p._flags & amqp_flags_t(flag) != 0 }
        var properties = MessageProperties()
        if has(AMQP_BASIC_CONTENT_TYPE_FLAG) { properties.contentType = recurring(p.content_type) }
        if has(AMQP_BASIC_CONTENT_ENCODING_FLAG) { properties.contentEncoding = string(p.content_encoding) }
        if has(AMQP_BASIC_HEADERS_FLAG) { properties.headers = table(p.headers) }
        if has(AMQP_BASIC_DELIVERY_MODE_FLAG) { properties.deliveryMode = p.delivery_mode }
        if has(AMQP_BASIC_PRIORITY_FLAG) { properties.priority = p.priority }
        if has(AMQP_BASIC_CORRELATION_ID_FLAG) { properties.correlationID = string(p.correlation_id) }
        if has(AMQP_BASIC_REPLY_TO_FLAG) { properties.replyTo = string(p.reply_to) }
        if has(AMQP_BASIC_EXPIRATION_FLAG) { properties.expiration = string(p.expiration) }
        if has(AMQP_BASIC_MESSAGE_ID_FLAG) { properties.messageID = string(p.message_id) }
        if has(AMQP_BASIC_TIMESTAMP_FLAG) { properties.timestamp = Date(timeIntervalSince1970: Double(p.timestamp)) }
        if has(AMQP_BASIC_TYPE_FLAG) { properties.type = recurring(p.type) }
        if has(AMQP_BASIC_USER_ID_FLAG) { properties.userID = string(p.user_id) }
        if has(AMQP_BASIC_APP_ID_FLAG) { properties.appID = string(p.app_id) }
        return properties
    }

    static func table(_ table: amqp_table_t) -> [String: AMQPValue] {
        var result: [String: AMQPValue] = [:]
        guard table.num_entries > 0, let entries = table.entries else { return result }
        for index in 0..<Int(table.num_entries) {
            result[string(entries[index].key)] = value(entries[index].value)
        }
        return result
    }

    static func value(_ field: amqp_field_value_t) -> AMQPValue {
        let v = field.value
        switch Int32(field.kind) {
        case Int32(AMQP_FIELD_KIND_BOOLEAN.rawValue): return .bool(v.boolean != 0)
        case Int32(AMQP_FIELD_KIND_I8.rawValue): return .int(Int64(v.i8))
        case Int32(AMQP_FIELD_KIND_U8.rawValue): return .int(Int64(v.u8))
        case Int32(AMQP_FIELD_KIND_I16.rawValue): return .int(Int64(v.i16))
        case Int32(AMQP_FIELD_KIND_U16.rawValue): return .int(Int64(v.u16))
        case Int32(AMQP_FIELD_KIND_I32.rawValue): return .int(Int64(v.i32))
        case Int32(AMQP_FIELD_KIND_U32.rawValue): return .int(Int64(v.u32))
        case Int32(AMQP_FIELD_KIND_I64.rawValue): return .int(v.i64)
        case Int32(AMQP_FIELD_KIND_U64.rawValue): return .int(Int64(bitPattern: v.u64))
        case Int32(AMQP_FIELD_KIND_F32.rawValue): return .double(Double(v.f32))
        case Int32(AMQP_FIELD_KIND_F64.rawValue): return .double(v.f64)
        case Int32(AMQP_FIELD_KIND_UTF8.rawValue): return .string(string(v.bytes))
        case Int32(AMQP_FIELD_KIND_BYTES.rawValue): return .bytes(array(v.bytes))
        case Int32(AMQP_FIELD_KIND_TIMESTAMP.rawValue): return .timestamp(Date(timeIntervalSince1970: Double(v.u64)))
        case Int32(AMQP_FIELD_KIND_TABLE.rawValue): return .table(table(v.table))
        case Int32(AMQP_FIELD_KIND_DECIMAL.rawValue): return .decimal(scale: v.decimal.decimals, value: v.decimal.value)
        case Int32(AMQP_FIELD_KIND_ARRAY.rawValue):
            guard v.array.num_entries > 0, let entries = v.array.entries else { return .array([]) }
            return .array((0..<Int(v.array.num_entries)).map { value(entries[$0]) })
        default: return .void
        }
    }
}

/// Memory for one call into rabbitmq-c: C copies of strings and tables, freed together.
private final class Arena {
    private var allocations: [UnsafeMutableRawPointer] = []

    deinit { for pointer in allocations { free(pointer) } }

    private func allocate(_ size: Int) -> UnsafeMutableRawPointer {
        let pointer = malloc(max(size, 1))!
        allocations.append(pointer)
        return pointer
    }

    func bytes(_ string: String) -> amqp_bytes_t { bytes(Array(string.utf8)) }

    func bytes(_ array: [UInt8]) -> amqp_bytes_t {
        let pointer = allocate(array.count)
        array.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: array.count) }
        return amqp_bytes_t(len: array.count, bytes: pointer)
    }

    func table(_ values: [String: AMQPValue]) -> amqp_table_t {
        guard !values.isEmpty else { return amqp_empty_table }
        let entries = allocate(MemoryLayout<amqp_table_entry_t>.stride * values.count)
            .bindMemory(to: amqp_table_entry_t.self, capacity: values.count)
        for (index, (key, value)) in values.sorted(by: { $0.key < $1.key }).enumerated() {
            entries[index] = amqp_table_entry_t(key: bytes(key), value: field(value))
        }
        return amqp_table_t(num_entries: Int32(values.count), entries: entries)
    }

    func field(_ value: AMQPValue) -> amqp_field_value_t {
        var result = amqp_field_value_t()
        switch value {
        case let .bool(flag):
            result.kind = UInt8(AMQP_FIELD_KIND_BOOLEAN.rawValue)
            result.value.boolean = flag ? 1 : 0
        case let .int(number):
            result.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
            result.value.i64 = number
        case let .double(number):
            result.kind = UInt8(AMQP_FIELD_KIND_F64.rawValue)
            result.value.f64 = number
        case let .string(text):
            result.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
            result.value.bytes = bytes(text)
        case let .bytes(data):
            result.kind = UInt8(AMQP_FIELD_KIND_BYTES.rawValue)
            result.value.bytes = bytes(data)
        case let .timestamp(date):
            result.kind = UInt8(AMQP_FIELD_KIND_TIMESTAMP.rawValue)
            result.value.u64 = RawConnection.epochSeconds(date)
        case let .table(values):
            result.kind = UInt8(AMQP_FIELD_KIND_TABLE.rawValue)
            result.value.table = table(values)
        case let .array(values):
            result.kind = UInt8(AMQP_FIELD_KIND_ARRAY.rawValue)
            let entries = allocate(MemoryLayout<amqp_field_value_t>.stride * max(values.count, 1))
                .bindMemory(to: amqp_field_value_t.self, capacity: max(values.count, 1))
            for (index, element) in values.enumerated() { entries[index] = self.field(element) }
            result.value.array = amqp_array_t(num_entries: Int32(values.count), entries: entries)
        case let .decimal(scale, number):
            result.kind = UInt8(AMQP_FIELD_KIND_DECIMAL.rawValue)
            result.value.decimal = amqp_decimal_t(decimals: scale, value: number)
        case .void:
            result.kind = UInt8(AMQP_FIELD_KIND_VOID.rawValue)
        }
        return result
    }

    func properties(_ p: MessageProperties) -> amqp_basic_properties_t {
        var c = amqp_basic_properties_t()
        var flags: Int32 = 0
        func set(_ value: String?, _ flag: Int32, _ assign: (amqp_bytes_t) -> Void) {
            guard let value else { return }
            flags |= flag
            assign(bytes(value))
        }
        set(p.contentType, AMQP_BASIC_CONTENT_TYPE_FLAG) { c.content_type = $0 }
        set(p.contentEncoding, AMQP_BASIC_CONTENT_ENCODING_FLAG) { c.content_encoding = $0 }
        set(p.correlationID, AMQP_BASIC_CORRELATION_ID_FLAG) { c.correlation_id = $0 }
        set(p.replyTo, AMQP_BASIC_REPLY_TO_FLAG) { c.reply_to = $0 }
        set(p.expiration, AMQP_BASIC_EXPIRATION_FLAG) { c.expiration = $0 }
        set(p.messageID, AMQP_BASIC_MESSAGE_ID_FLAG) { c.message_id = $0 }
        set(p.type, AMQP_BASIC_TYPE_FLAG) { c.type = $0 }
        set(p.userID, AMQP_BASIC_USER_ID_FLAG) { c.user_id = $0 }
        set(p.appID, AMQP_BASIC_APP_ID_FLAG) { c.app_id = $0 }
        if !p.headers.isEmpty {
            flags |= AMQP_BASIC_HEADERS_FLAG
            c.headers = table(p.headers)
        }
        if let mode = p.deliveryMode {
            flags |= AMQP_BASIC_DELIVERY_MODE_FLAG
            c.delivery_mode = mode
        }
        if let priority = p.priority {
            flags |= AMQP_BASIC_PRIORITY_FLAG
            c.priority = priority
        }
        if let timestamp = p.timestamp {
            flags |= AMQP_BASIC_TIMESTAMP_FLAG
            c.timestamp = RawConnection.epochSeconds(timestamp)
        }
        c._flags = amqp_flags_t(flags)
        return c
    }
}

/// The last few distinct short strings read, reused when the same bytes come again: a delivery's
/// exchange, routing key, consumer tag, content type and job type are the same for most messages,
/// and each would otherwise cost an allocation (past 15 bytes) and a UTF-8 check.
struct RecurringStrings {
    private var entries: [String] = []
    private var next = 0
    static let capacity = 16
    static let longest = 64

    mutating func string(_ bytes: amqp_bytes_t) -> String {
        string(UnsafeRawBufferPointer(start: bytes.bytes, count: bytes.bytes == nil ? 0 : bytes.len))
    }

    mutating func string(_ raw: UnsafeRawBufferPointer) -> String {
        guard let base = raw.baseAddress, raw.count > 0 else { return "" }
        guard raw.count <= Self.longest else { return String(decoding: raw, as: UTF8.self) }
        for entry in entries where entry.utf8.count == raw.count {
            // Strings made by `String(decoding:)` are native: their UTF-8 is contiguous.
            if entry.utf8.withContiguousStorageIfAvailable({ memcmp($0.baseAddress!, base, raw.count) == 0 }) == true { return entry }
        }
        let string = String(decoding: raw, as: UTF8.self)
        if entries.count < Self.capacity {
            entries.append(string)
        } else {
            entries[next] = string
            next = (next + 1) % Self.capacity
        }
        return string
    }
}

extension RawConnection {
    /// A date as an AMQP timestamp: whole seconds, clamped to what `UInt64` holds (NaN is 0), so a
    /// header or property copied from an incoming message with an absurd timestamp cannot trap.
    static func epochSeconds(_ date: Date) -> UInt64 {
        let seconds = date.timeIntervalSince1970
        guard seconds >= 1 else { return 0 }
        // 2^64 itself does not fit; the largest double below it does.
        guard seconds < 18_446_744_073_709_551_616.0 else { return UInt64(18_446_744_073_709_549_568.0) }
        return UInt64(seconds)
    }
}

/// What the next step of a frame loop found: a delivery, or a frame that is not one (a confirm, a
/// return, a consumer cancel…).
package enum WireEvent {
    case delivery(IncomingMessage)
    case control(ControlFrame)
}

extension RawConnection {
    /// The one step every frame loop here takes (the connection's I/O thread, the admin tools, the
    /// benchmark's fill): the next delivery or control frame that has arrived. Without a deadline
    /// it returns nil at once when nothing has; with one, it waits for the socket (or `wake`) until
    /// then.
    package func nextEvent(waitingUntil deadline: ContinuousClock.Instant? = nil, wake: EventFD? = nil) throws(AMQPError) -> WireEvent? {
        while true {
            switch try poll() {
            case let .message(message):
                return .delivery(message)
            case .frameWaiting:
                let frame = try readFrame()
                if case .none = frame { continue }
                return .control(frame)
            case .nothing:
                guard let deadline, let wake else { return nil }
                let left = deadline - ContinuousClock.now
                guard left > .zero else { return nil }
                wake.wait(socket: socketDescriptor, for: min(left, .milliseconds(200)))
            }
        }
    }
}
