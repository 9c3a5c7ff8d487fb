import DequeModule
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Warren
import WarrenIO
import Synchronization

/// A RabbitMQ connection served by one dedicated thread, the only one that touches rabbitmq-c.
///
/// The thread blocks only in `ppoll` on the socket and an eventfd (so commands wake it at once, and
/// heartbeats keep flowing while handlers run for minutes), or on the eventfd alone for the linger
/// after a small burst of deliveries. It drains the command inbox, sends acks (coalesced with
/// `multiple`), hands deliveries to `onMessage`, and reads publisher confirms.
/// A lost connection or channel is re-established with capped exponential backoff; `onConnect`
/// runs again (topology, consumers) and the generation goes up: acks of an older generation are
/// dropped, never sent on the new channel, and the broker redelivers those messages.
final class AMQPConnection: Sendable {
    struct Configuration: Sendable {
        /// Tried in order; on a loss the next is tried at once, and the backoff applies only
        /// after every address failed in a row (the nodes of one cluster).
        var urls: [AMQPURL]
        var name: String = "warren"
        var initialBackoff: Double = 0.1
        // Short: a node back from a restart is used within this much (with 10 s a node's return
        // was missed by almost 10 s); an unreachable broker costs one attempt per address this often.
        var maxBackoff: Double = 2
        /// While deliveries stream in, finished deliveries are acked once this many wait (or 2 ms
        /// have passed): one `multiple` ack instead of many. Keep it well under the prefetch.
        var ackBatch = 16
        /// After a burst of fewer than `smallBurst` deliveries while they stream in, the I/O thread
        /// waits this long before reading again (see `IOLoop.linger`). Zero: never.
        var linger: Duration = .zero

        init(urls: [AMQPURL], name: String = "warren", ackBatch: Int = 16, linger: Duration = .zero) {
            precondition(!urls.isEmpty, "a connection needs an address")
            self.urls = urls
            self.name = name
            self.ackBatch = ackBatch
            self.linger = linger
        }

        init(url: AMQPURL, name: String = "warren", ackBatch: Int = 16, linger: Duration = .zero) {
            self.init(urls: [url], name: name, ackBatch: ackBatch, linger: linger)
        }
    }

    /// Called on the I/O thread when the broker cancels a consumer (its queue was deleted, or the
    /// queue's node went down): the consumer's tag. The channel and its other consumers live on.
    typealias CancelHandler = @Sendable (String) -> Void

    typealias Status = ConnectionState

    /// Runs on the I/O thread after every (re)connection, before anything else.
    typealias Setup = @Sendable (ConnectionSession) throws(AMQPError) -> Void
    /// Receives deliveries on the I/O thread, a burst at a time, in order; must return quickly.
    typealias MessageHandler = @Sendable ([IncomingMessage], UInt64) -> Void

    let configuration: Configuration
    private let inbox = Locked(Inbox())
    private let wake = EventFD()
    /// Everyone following status changes.
    private let watchers = Followers<Status>(buffer: 64)
    private let currentStatus = Locked(Status.connecting)
    /// Why the connection was last lost or refused, until it is up again.
    private let lastFailure = Locked<String?>(nil)
    private let connects = Locked(0)

    /// A connection that does not connect yet: the owner builds what needs it, then calls `start`.
    /// Commands sent before are served once it is up.
    init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    /// Starts the I/O thread, which connects (and reconnects) on its own.
    /// - Parameter reconnected: called on the I/O thread each time a connection or channel is set
    ///   up again after the first.
    func start(
        setup: @escaping Setup, onMessage: @escaping MessageHandler, onCancel: @escaping CancelHandler = { _ in },
        reconnected: @escaping @Sendable () -> Void = {}
    ) {
        let loop = IOLoop(
            configuration: configuration, inbox: inbox, wake: wake, setup: setup, onMessage: onMessage, onCancel: onCancel,
            report: { [watchers, currentStatus, lastFailure, connects] status in
                currentStatus.withLock { $0 = status }
                switch status {
                case let .disconnected(reason): lastFailure.withLock { $0 = reason }
                case .connected: lastFailure.withLock { $0 = nil }
                case .connecting, .closed: break
                }
                if case .connected = status, connects.withLock({ count in
                    count += 1
                    return count > 1
                }) {
                    reconnected()
                }
                watchers.tell(status)
                if status == .closed { watchers.finish() }
            })
        startThread(named: "amqp-\(configuration.name)") { loop.run() }
    }

    /// Created and started: see `start`.
    convenience init(
        _ configuration: Configuration, setup: @escaping Setup, onMessage: @escaping MessageHandler,
        onCancel: @escaping CancelHandler = { _ in }, reconnected: @escaping @Sendable () -> Void = {}
    ) {
        self.init(configuration)
        start(setup: setup, onMessage: onMessage, onCancel: onCancel, reconnected: reconnected)
    }

    var status: Status { currentStatus.withLock { $0 } }

    /// Why the connection is not up: the last loss or refusal, also while the next attempt runs
    /// (nil once connected).
    var failure: String? { lastFailure.withLock { $0 } }

    /// Times a connection or channel was set up (the first included).
    var connectCount: Int { connects.withLock { $0 } }

    /// Status changes from now on (connected, disconnected with the reason, closed).
    /// A new stream on each access: any number of followers; it ends when the connection closes.
    var statusUpdates: AsyncStream<Status> {
        let stream = watchers.follow()
        // Closed before this follower came: it gets nothing more.
        if status == .closed { watchers.finish() }
        return stream
    }

    /// Publishes and waits for the broker's confirm. On connection loss the message is published
    /// again after reconnecting (at least once), until `deadline`.
    func publish(_ message: OutgoingMessage, deadline: Duration = .seconds(30)) async throws(AMQPError) {
        let until = ContinuousClock.now + deadline
        while true {
            let result: Result<Void, AMQPError> = await withCheckedContinuation { continuation in
                send(.publish(message, continuation))
            }
            switch result {
            case .success: return
            case let .failure(error) where error.isConnectionLoss || error.isChannelLoss:
                guard ContinuousClock.now < until, !isClosed else { throw error }
                try? await Task.sleep(for: .milliseconds(50))
            case let .failure(error):
                throw error
            }
        }
    }

    /// Publishes without waiting for the confirm, and without retrying through connection loss
    /// (lifecycle events: at most once).
    func notify(_ message: OutgoingMessage) { send(.notify(message)) }

    /// Acks a delivery of `generation` (dropped if the channel has changed since).
    func ack(_ tag: UInt64, generation: UInt64) { send(.ack(tag, generation)) }

    /// Returns a delivery of `generation` to its queue (`basic.nack` with requeue).
    func giveBack(_ tag: UInt64, generation: UInt64) { send(.giveBack(tag, generation)) }

    /// Runs `body` on the I/O thread with the live connection (declarations, purges, inspection).
    func perform<T: Sendable>(_ body: @escaping @Sendable (ConnectionSession) throws(AMQPError) -> T) async throws(AMQPError) -> T {
        let result: Result<T, AMQPError> = await withCheckedContinuation { continuation in
            send(.perform { session in
                do throws(AMQPError) { continuation.resume(returning: .success(try body(session))) } catch {
                    continuation.resume(returning: .failure(error))
                }
            } failed: { error in continuation.resume(returning: .failure(error)) })
        }
        return try result.get()
    }

    /// Flushes acks, closes the connection and ends the thread. Commands sent after it fail.
    func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let accepted = inbox.withLock { inbox -> Bool in
                guard !inbox.closed, inbox.closeRequest == nil else { return false }
                inbox.closeRequest = continuation
                return true
            }
            if accepted { wake.signal() } else { continuation.resume() }
        }
    }

    private var isClosed: Bool { currentStatus.withLock { $0 == .closed } }

    private func send(_ command: Command) {
        enum Sent { case rejected(Command), signal, queued }
        let sent = inbox.withLock { inbox -> Sent in
            if inbox.closed { return .rejected(command) }
            inbox.commands.append(command)
            // The I/O thread takes the whole inbox at once: one wake-up per non-empty inbox is
            // enough. While deliveries stream in it looks at the inbox every millisecond anyway, so
            // acks then wake it only once enough of them wait.
            guard !inbox.signalled else { return .queued }
            if case .ack = command, inbox.streaming, inbox.commands.count < Inbox.acksPerWakeUp { return .queued }
            inbox.signalled = true
            return .signal
        }
        switch sent {
        case let .rejected(command): command.fail(.closed)
        case .signal: wake.signal()
        case .queued: break
        }
    }
}

/// A RabbitMQ connection's state: `connected` carries the channel's generation (it goes up on
/// every reconnection), `disconnected` the reason.
public enum ConnectionState: Sendable, Equatable {
    case connecting
    case connected(generation: UInt64)
    case disconnected(String)
    case closed
}

/// What the I/O thread offers `setup` and `perform`: the live connection, nothing else.
struct ConnectionSession {
    let raw: RawConnection
    let generation: UInt64
}

extension AMQPError {
    var isChannelLoss: Bool {
        if case .channelClosed = self { return true }
        return false
    }
}

private struct Inbox {
    static let acksPerWakeUp = 64
    var commands = Deque<Command>()
    /// Whether the I/O thread has been woken for the commands waiting.
    var signalled = false
    /// Set by the I/O thread while deliveries arrive: it then polls with a 1 ms timeout.
    var streaming = false
    /// Set by `close()`: the I/O thread sees it even while it waits to reconnect.
    var closeRequest: CheckedContinuation<Void, Never>?
    var closed = false
}

/// Small (publishes are boxed): acks, by far the most frequent, are copied into and out of the inbox.
private enum Command: Sendable {
    indirect case publish(OutgoingMessage, CheckedContinuation<Result<Void, AMQPError>, Never>)
    indirect case notify(OutgoingMessage)
    case ack(UInt64, UInt64)
    case giveBack(UInt64, UInt64)
    case perform(@Sendable (ConnectionSession) -> Void, failed: @Sendable (AMQPError) -> Void)

    func fail(_ error: AMQPError) {
        switch self {
        case let .publish(_, continuation): continuation.resume(returning: .failure(error))
        case let .perform(_, failed): failed(error)
        case .notify, .ack, .giveBack: break
        }
    }
}

/// Everything the I/O thread owns. Used from that thread only.
private final class IOLoop: @unchecked Sendable {
    let configuration: AMQPConnection.Configuration
    let inbox: Locked<Inbox>
    let wake: EventFD
    let setup: AMQPConnection.Setup
    let onMessage: AMQPConnection.MessageHandler
    let onCancel: AMQPConnection.CancelHandler
    let report: @Sendable (AMQPConnection.Status) -> Void

    var raw: RawConnection?
    var generation: UInt64 = 0
    var acks = AckTracker()
    /// Publishes waiting for their confirm, by publish sequence number.
    var unconfirmed: [UInt64: (continuation: CheckedContinuation<Result<Void, AMQPError>, Never>, messageID: String?)] = [:]
    var publishSequence: UInt64 = 0
    var returned: [String: AMQPError] = [:]
    var closing: CheckedContinuation<Void, Never>?
    var backoff: Double
    /// The address (index in `configuration.urls`) to connect to next, and how many failed in a row.
    var address = 0
    var failedInRow = 0
    /// Whether the connection to `address` was set up (and not lost since).
    var established = false
    /// The channel `start` set up; any other means the channel was reopened since.
    var startedSerial = -1
    /// Acks asked for since the last flush, and when the first of them was.
    var unflushed = 0
    var firstUnflushed: ContinuousClock.Instant?
    /// Deliveries count as streaming for 2 ms after the last one: a read that comes back empty
    /// between two bursts does not end it (each ack would then wake this thread on its own).
    var streaming = false
    var lastDelivery: ContinuousClock.Instant?

    init(
        configuration: AMQPConnection.Configuration, inbox: Locked<Inbox>, wake: EventFD, setup: @escaping AMQPConnection.Setup,
        onMessage: @escaping AMQPConnection.MessageHandler, onCancel: @escaping AMQPConnection.CancelHandler,
        report: @escaping @Sendable (AMQPConnection.Status) -> Void
    ) {
        self.configuration = configuration
        self.inbox = inbox
        self.wake = wake
        self.setup = setup
        self.onMessage = onMessage
        self.onCancel = onCancel
        self.report = report
        backoff = configuration.initialBackoff
    }

    func run() {
        while !closeRequested() {
            guard let raw, raw.isOpen, raw.channelOpen, raw.channelSerial == startedSerial else {
                connect()
                continue
            }
            do throws(AMQPError) {
                try serveCommands(raw)
                if acksDue() { try flushAcks(raw) }
                let received = try receive(raw)
                if received > 0 {
                    lastDelivery = .now
                    streaming = true
                    if received < Self.smallBurst { linger() }
                } else if streaming, let lastDelivery, ContinuousClock.now - lastDelivery >= .milliseconds(2) {
                    streaming = false
                }
                if !raw.hasBufferedInput {
                    // Tell `send` whether unsignalled acks will be seen within a millisecond; when that
                    // changes to no, acks already waiting are served before sleeping.
                    let waiting = inbox.withLock { inbox in
                        inbox.streaming = streaming
                        return !inbox.commands.isEmpty
                    }
                    if waiting { continue }
                    let heartbeat = raw.heartbeat
                    let idle: Duration = acks.hasDeferred || streaming ? .milliseconds(1) : .milliseconds(heartbeat > 0 ? heartbeat * 250 : 1_000)
                    wake.wait(socket: raw.socketDescriptor, for: idle)
                }
            } catch {
                lost(error)
            }
        }
        finishClosing()
    }

    // MARK: Connecting

    /// (Re)establishes the connection or just the channel, and sets it up; backs off on failure.
    private func connect() {
        report(.connecting)
        // A failure from here on is this attempt's (the catch below moves on), not a loss.
        established = false
        do throws(AMQPError) {
            if let raw, raw.isOpen {
                // A channel error: the connection lives, reopen the channel.
                if !raw.channelOpen { try raw.openChannel() }
                try start(raw)
            } else {
                raw = nil
                let url = configuration.urls[address]
                let connection = try RawConnection(url: url, name: "warren \(configuration.name) (pid \(getpid()))")
                raw = connection
                try start(connection)
            }
            backoff = configuration.initialBackoff
            failedInRow = 0
        } catch {
            lost(error)
            // The next address at once; the backoff only once all of them failed in a row.
            failedInRow += 1
            address = (address + 1) % configuration.urls.count
            if failedInRow >= configuration.urls.count {
                pause(seconds: backoff)
                backoff = min(configuration.maxBackoff, backoff * 2)
            }
        }
    }

    /// Sets up a new channel: the owner's topology and consumers first (which may reopen the channel
    /// after a declaration error), then publisher confirms on the channel that remains.
    private func start(_ raw: RawConnection) throws(AMQPError) {
        generation += 1
        acks.reset()
        unflushed = 0
        firstUnflushed = nil
        streaming = false
        lastDelivery = nil
        publishSequence = 0
        returned.removeAll()
        try setup(ConnectionSession(raw: raw, generation: generation))
        try raw.selectConfirms()
        startedSerial = raw.channelSerial
        established = true
        report(.connected(generation: generation))
    }

    private func lost(_ error: AMQPError) {
        report(.disconnected(error.description))
        failUnconfirmed(error)
        acks.reset()
        unflushed = 0
        firstUnflushed = nil
        guard error.isConnectionLoss else { return }
        if established {
            // A working connection was lost: its node may be gone, so the next address first.
            established = false
            address = (address + 1) % configuration.urls.count
            failedInRow = 0
        }
        raw?.close()
        raw = nil
    }

    private func failUnconfirmed(_ error: AMQPError) {
        let waiting = unconfirmed.values.map(\.continuation)
        unconfirmed.removeAll()
        for continuation in waiting { continuation.resume(returning: .failure(error)) }
    }

    /// Whether `close()` has been called (and remembers its caller to resume at the end).
    private func closeRequested() -> Bool {
        if closing == nil { closing = inbox.withLock { $0.closeRequest } }
        return closing != nil
    }

    /// Sleeps between connection attempts; wakes early only to close. Commands sent meanwhile stay
    /// queued for the next connection (acks of the lost one are then dropped as stale).
    private func pause(seconds: Double) {
        let until = ContinuousClock.now + .seconds(seconds)
        while !closeRequested() {
            let left = until - ContinuousClock.now
            guard left > .zero else { return }
            wake.wait(socket: nil, for: min(left, .seconds(1)))
        }
    }

    // MARK: Serving

    private func takeCommands() -> Deque<Command> {
        inbox.withLock { inbox in
            inbox.signalled = false
            defer { inbox.commands.removeAll(keepingCapacity: true) }
            return inbox.commands
        }
    }

    private func serveCommands(_ raw: RawConnection) throws(AMQPError) {
        for command in takeCommands() {
            switch command {
            case let .publish(message, continuation):
                do throws(AMQPError) {
                    try raw.publish(message)
                } catch {
                    continuation.resume(returning: .failure(error))
                    throw error
                }
                publishSequence += 1
                unconfirmed[publishSequence] = (continuation, message.mandatory ? message.properties.messageID : nil)
            case let .notify(message):
                // Confirmed like every publish on this channel; nobody waits for it.
                try raw.publish(message)
                publishSequence += 1
            case let .ack(tag, generation):
                guard generation == self.generation else { continue }
                acks.finish(tag)
                unflushed += 1
                if firstUnflushed == nil { firstUnflushed = .now }
            case let .giveBack(tag, generation):
                guard generation == self.generation else { continue }
                try raw.nack(tag, requeue: true)
                acks.settledElsewhere(tag)
            case let .perform(body, _):
                body(ConnectionSession(raw: raw, generation: generation))
                if !raw.isOpen { throw .closed }
                if !raw.channelOpen || raw.channelSerial != startedSerial {
                    throw .channelClosed(code: 0, text: "the channel was closed or reopened", during: "running a command")
                }
            }
        }
    }

    /// Whether to send acks now: at once when deliveries are not streaming in; while they are, once
    /// a batch waits or the oldest has waited 2 ms.
    private func acksDue() -> Bool {
        guard let firstUnflushed else { return false }
        return !streaming || unflushed >= configuration.ackBatch || ContinuousClock.now - firstUnflushed >= .milliseconds(2)
    }

    private func flushAcks(_ raw: RawConnection) throws(AMQPError) {
        for ack in acks.flush() { try raw.ack(ack.tag, multiple: ack.multiple) }
        unflushed = 0
        // Out-of-order tags wait a round: keep the clock running for them.
        firstUnflushed = acks.hasDeferred ? .now : nil
    }

    /// Bursts smaller than this are followed by a linger.
    static let smallBurst = 64

    /// Lets the next deliveries of a stream gather for a moment (they are not delayed past
    /// `configuration.linger`; a command, such as a publish, ends the wait). Every burst costs a
    /// poll, a read, the local queue's lock and usually a thread wake-up, so a few larger bursts
    /// take less CPU per job than many small ones, CPU the broker may share on the same machine.
    private func linger() {
        guard configuration.linger > .zero else { return }
        wake.wait(socket: nil, for: configuration.linger)
    }

    /// Reads what has arrived; returns how many deliveries.
    @discardableResult
    private func receive(_ raw: RawConnection) throws(AMQPError) -> Int {
        var burst: [IncomingMessage] = []
        defer { if !burst.isEmpty { onMessage(burst, generation) } }
        // Bounded, so commands and acks are served between bursts.
        for _ in 0..<512 {
            switch try raw.nextEvent() {
            case let .delivery(message)?:
                acks.delivered(message.deliveryTag)
                burst.append(message)
            case let .control(frame)?:
                try handle(frame)
            case nil:
                return burst.count
            }
        }
        return burst.count
    }

    private func handle(_ frame: ControlFrame) throws(AMQPError) {
        switch frame {
        case let .confirmAck(tag, multiple):
            settleConfirms(upTo: tag, multiple: multiple, nack: false)
        case let .confirmNack(tag, multiple):
            settleConfirms(upTo: tag, multiple: multiple, nack: true)
        case let .returned(code, text, exchange, key, messageID):
            if let messageID { returned[messageID] = .unroutable(exchange: exchange, routingKey: key, text: "\(code) \(text)") }
        case let .consumerCancelled(tag):
            // Its queue was deleted or its node went down. The channel lives on (with the
            // unacked deliveries of running jobs); the owner starts the consumer again once the
            // queue is back.
            onCancel(tag)
        case .blocked, .unblocked, .other, .none:
            break
        }
    }

    private func settleConfirms(upTo tag: UInt64, multiple: Bool, nack: Bool) {
        let tags = multiple ? unconfirmed.keys.filter { $0 <= tag } : [tag]
        for sequence in tags {
            guard let (continuation, messageID) = unconfirmed.removeValue(forKey: sequence) else { continue }
            if nack {
                continuation.resume(returning: .failure(.publishRefused("the broker nacked the message (queue full or an internal error)")))
            } else if let messageID, let error = returned.removeValue(forKey: messageID) {
                continuation.resume(returning: .failure(error))
            } else {
                continuation.resume(returning: .success(()))
            }
        }
    }

    private func finishClosing() {
        if let raw, raw.isOpen {
            // Commands sent before the close still run (acks, publishes), then the connection goes.
            try? serveCommands(raw)
            try? flushAcks(raw)
            // Wait briefly for outstanding confirms so callers learn their fate.
            let until = ContinuousClock.now + .seconds(2)
            while !unconfirmed.isEmpty, ContinuousClock.now < until, raw.isOpen {
                do throws(AMQPError) { try receive(raw) } catch { break }
                if !raw.hasBufferedInput { wake.wait(socket: raw.socketDescriptor, for: .milliseconds(50)) }
            }
            raw.close()
        }
        failUnconfirmed(.closed)
        let rest = inbox.withLock { inbox -> Deque<Command> in
            inbox.closed = true
            defer { inbox.commands.removeAll() }
            return inbox.commands
        }
        for command in rest { command.fail(.closed) }
        raw = nil
        report(.closed)
        closing?.resume()
    }
}
