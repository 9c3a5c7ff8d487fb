import DequeModule
import Warren
import WarrenIO
#if canImport(Glibc)
import Glibc
#endif

/// A Redis connection served by one I/O thread of its own. Tasks hand it commands; the thread
/// writes everything queued since its last write in one go (a pipeline per burst) and hands each
/// request its replies. When the connection drops, requests in flight fail with `.connection`, the
/// thread reconnects with backoff (0.1 s doubling to 2 s), and while it is down new requests fail at
/// once with `.unavailable`: callers decide what to do without Redis (the job-state store falls back
/// to what one process knows) rather than wait. Requests made while the first connection is being
/// made wait for it.
///
/// In subscriber mode the client subscribes to its channels on every connection and hands each
/// message to `onMessage` on its thread; it takes no commands.
package final class RedisClient: Sendable {
    package enum Status: Sendable, Equatable {
        case connecting
        case connected
        /// Not connected, and why; it keeps trying.
        case down(String)
        case closed
    }

    fileprivate struct Request {
        let commands: [RedisCommand]
        let continuation: CheckedContinuation<Result<[RedisValue], RedisError>, Never>
    }

    fileprivate struct Inbox {
        var requests: [Request] = []
        var status: Status = .connecting
        var closing = false
        /// `waitUntilConnected` callers, by id: told true once connected, false once closed (or,
        /// for those that give up at the first failure, once down).
        var statusWaiters: [UInt64: (continuation: CheckedContinuation<Bool, Never>, untilFirstFailure: Bool)] = [:]
        var nextWaiter: UInt64 = 0
        /// Writes that sent commands (each a round trip, however many commands it carried).
        var roundTrips = 0
    }

    package let url: RedisURL
    private let inbox = Locked(Inbox())
    private let wake = EventFD()
    private let finished = Latch(1)

    /// A client that takes commands. `name` is what `CLIENT LIST` shows (no spaces).
    package init(url: RedisURL, name: String, onStatus: @escaping @Sendable (Status) -> Void = { _ in }) {
        self.url = url
        let loop = IOLoop(url: url, name: name, subscriptions: nil, inbox: inbox, wake: wake, onStatus: onStatus)
        let finished = self.finished
        startThread(named: "redis-\(name)") {
            loop.run()
            finished.countDown()
        }
    }

    /// A client that subscribes to `channels` and hands over their messages.
    package init(
        url: RedisURL, name: String, subscribingTo channels: [String],
        onMessage: @escaping @Sendable (_ channel: String, _ message: [UInt8]) -> Void,
        onStatus: @escaping @Sendable (Status) -> Void = { _ in }
    ) {
        self.url = url
        let loop = IOLoop(url: url, name: name, subscriptions: (channels, onMessage), inbox: inbox, wake: wake, onStatus: onStatus)
        let finished = self.finished
        startThread(named: "redis-\(name)") {
            loop.run()
            finished.countDown()
        }
    }

    /// A client dropped without `close` stops its thread all the same.
    deinit {
        inbox.withLock { $0.closing = true }
        wake.signal()
    }

    package var status: Status { inbox.withLock { $0.status } }

    /// Round trips so far: writes of one or more commands, each answered before the next is
    /// needed (what pipelining per burst keeps low).
    package var roundTrips: Int { inbox.withLock { $0.roundTrips } }

    /// Sends `commands` together and returns their replies in order. An error reply is a value
    /// here (`.error`), so that one failed command does not hide the others' results.
    package func pipeline(_ commands: [RedisCommand]) async throws(RedisError) -> [RedisValue] {
        guard !commands.isEmpty else { return [] }
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<[RedisValue], RedisError>, Never>) in
            let refusal = inbox.withLock { inbox -> RedisError? in
                if inbox.closing { return .closed }
                if case let .down(why) = inbox.status { return .unavailable(why) }
                // While the first connection is being made, requests wait for it (bounded by the
                // URL's timeout): a process's first calls are not failures.
                inbox.requests.append(Request(commands: commands, continuation: continuation))
                return nil
            }
            if let refusal { continuation.resume(returning: .failure(refusal)) } else { wake.signal() }
        }
        return try result.get()
    }

    /// Sends one command; an error reply throws `.reply`.
    @discardableResult
    package func command(_ command: RedisCommand) async throws(RedisError) -> RedisValue {
        let reply = try await pipeline([command])[0]
        if case let .error(text) = reply { throw .reply(text) }
        return reply
    }

    /// Waits until the client is connected, or `timeout` passes (then throws `.unavailable` with
    /// the last reason it is down). `untilFirstFailure`: gives up as soon as a connection attempt
    /// fails (refused, a wrong password), rather than wait through the retries.
    package func waitUntilConnected(within timeout: Duration, untilFirstFailure: Bool = false) async throws(RedisError) {
        let inbox = self.inbox
        // Started once the wait is registered; cancelled when the wait ends first.
        let expiry = Locked<Task<Void, Never>?>(nil)
        let connected = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let (now, id) = inbox.withLock { inbox -> (Bool?, UInt64) in
                switch inbox.status {
                case .connected: return (true, 0)
                case .closed: return (false, 0)
                case .down where untilFirstFailure: return (false, 0)
                case .down, .connecting:
                    inbox.nextWaiter += 1
                    inbox.statusWaiters[inbox.nextWaiter] = (continuation, untilFirstFailure)
                    return (nil, inbox.nextWaiter)
                }
            }
            if let now {
                continuation.resume(returning: now)
                return
            }
            expiry.withLock {
                $0 = Task {
                    try? await Task.sleep(for: timeout)
                    inbox.withLock { $0.statusWaiters.removeValue(forKey: id) }?.continuation.resume(returning: false)
                }
            }
        }
        expiry.withLock { $0 }?.cancel()
        guard !connected else { return }
        switch status {
        case .closed: throw .closed
        case let .down(why): throw .unavailable(why)
        default: throw .unavailable("not connected to \(url) within \(timeout)")
        }
    }

    /// Stops the thread: requests not answered yet fail with `.closed`.
    package func close() async {
        inbox.withLock { $0.closing = true }
        wake.signal()
        await finished.wait()
    }
}

/// The client's thread: connects, writes what is queued, reads replies, reconnects.
private final class IOLoop: @unchecked Sendable {
    typealias Subscriptions = (channels: [String], onMessage: @Sendable (String, [UInt8]) -> Void)

    private struct Pending {
        /// nil for the thread's own PING.
        let request: RedisClient.Request?
        let expected: Int
        var replies: [RedisValue] = []
    }

    private let url: RedisURL
    private let name: String
    private let subscriptions: Subscriptions?
    private let inbox: Locked<RedisClient.Inbox>
    private let wake: EventFD
    private let onStatus: @Sendable (RedisClient.Status) -> Void
    /// Idle this long, the thread PINGs: a server that stopped answering is noticed within
    /// `keepAlive + url.timeout` even when nothing is asked of it.
    private let keepAlive: Duration = .seconds(5)

    init(
        url: RedisURL, name: String, subscriptions: Subscriptions?, inbox: Locked<RedisClient.Inbox>, wake: EventFD,
        onStatus: @escaping @Sendable (RedisClient.Status) -> Void
    ) {
        (self.url, self.name, self.subscriptions, self.inbox, self.wake, self.onStatus) = (url, name, subscriptions, inbox, wake, onStatus)
    }

    func run() {
        var backoff: Duration = .milliseconds(100)
        while !closing() {
            let connection: HiredisConnection
            do {
                connection = try connect()
            } catch {
                setStatus(.down(error.description))
                wake.wait(socket: nil, for: backoff)
                backoff = min(backoff * 2, .seconds(2))
                continue
            }
            backoff = .milliseconds(100)
            setStatus(.connected)
            var pending = Deque<Pending>()
            do {
                try serve(connection, &pending)
            } catch {
                let reason = error.description
                // Taken by the next loop round (or refused) once the status says down.
                setStatus(.down(reason))
                for entry in pending { entry.request?.continuation.resume(returning: .failure(.connection(reason))) }
            }
        }
        let left = inbox.withLock { inbox -> [RedisClient.Request] in
            defer { inbox.requests = [] }
            return inbox.requests
        }
        for request in left { request.continuation.resume(returning: .failure(.closed)) }
        setStatus(.closed)
    }

    private func closing() -> Bool { inbox.withLock { $0.closing } }

    private func setStatus(_ status: RedisClient.Status) {
        let (changed, refused, waiters) = inbox.withLock { inbox -> (Bool, [RedisClient.Request], [CheckedContinuation<Bool, Never>]) in
            guard inbox.status != status else { return (false, [], []) }
            inbox.status = status
            var waiters: [CheckedContinuation<Bool, Never>] = []
            for (id, waiter) in inbox.statusWaiters where status == .connected || status == .closed || waiter.untilFirstFailure {
                waiters.append(waiter.continuation)
                inbox.statusWaiters[id] = nil
            }
            guard case .down = status else { return (true, [], waiters) }
            // Queued while it was going down: not sent.
            defer { inbox.requests = [] }
            return (true, inbox.requests, waiters)
        }
        if case let .down(why) = status {
            for request in refused { request.continuation.resume(returning: .failure(.unavailable(why))) }
        }
        for waiter in waiters { waiter.resume(returning: status == .connected) }
        if changed { onStatus(status) }
    }

    /// Connects and sets the connection up: AUTH, SELECT, CLIENT SETNAME and, for a subscriber,
    /// SUBSCRIBE; an error reply fails the connection with that error.
    private func connect() throws(RedisError) -> HiredisConnection {
        let connection = try HiredisConnection(host: url.host, port: url.port, timeout: url.timeout)
        var setup: [RedisCommand] = []
        if let password = url.password {
            setup.append(url.user.map { RedisCommand("AUTH", $0, password) } ?? RedisCommand("AUTH", password))
        }
        if url.database != 0 { setup.append(RedisCommand("SELECT", url.database)) }
        setup.append(RedisCommand("CLIENT", "SETNAME", String(name.map { $0 == " " ? "-" : $0 })))
        var expected = setup.count
        if let subscriptions, !subscriptions.channels.isEmpty {
            setup.append(RedisCommand("SUBSCRIBE", arguments: subscriptions.channels))
            expected += subscriptions.channels.count
        }
        for command in setup { try connection.append(command.arguments) }
        try connection.flush()
        let deadline = ContinuousClock.now + url.timeout
        var received = 0
        while received < expected {
            guard let reply = try connection.nextReply() else {
                guard ContinuousClock.now < deadline else { throw .connection("no answer to AUTH/SELECT/SUBSCRIBE within \(url.timeout)") }
                if readable(connection.descriptor, within: deadline - ContinuousClock.now) { try connection.read() }
                continue
            }
            if case let .error(text) = reply { throw .reply(text) }
            received += 1
        }
        return connection
    }

    private func serve(_ connection: HiredisConnection, _ pending: inout Deque<Pending>) throws(RedisError) {
        // Since when the oldest unanswered command has waited (reset by every reply).
        var waitingSince: ContinuousClock.Instant?
        var lastActivity = ContinuousClock.now
        while true {
            let (requests, closing) = inbox.withLock { inbox -> ([RedisClient.Request], Bool) in
                defer { inbox.requests = [] }
                return (inbox.requests, inbox.closing)
            }
            if closing {
                for request in requests { request.continuation.resume(returning: .failure(.closed)) }
                for entry in pending { entry.request?.continuation.resume(returning: .failure(.closed)) }
                pending = []
                return
            }
            var wrote = false
            // Pending before they are written: if writing fails, the caller fails them all.
            var taken = 0
            for request in requests {
                if subscriptions != nil {
                    request.continuation.resume(returning: .failure(.invalid("a subscriber takes no commands")))
                    continue
                }
                pending.append(Pending(request: request, expected: request.commands.count))
                taken += 1
            }
            for entry in pending.suffix(taken) {
                for command in entry.request?.commands ?? [] { try connection.append(command.arguments) }
                wrote = true
            }
            if pending.isEmpty, ContinuousClock.now - lastActivity >= keepAlive {
                try connection.append(RedisCommand("PING").arguments)
                pending.append(Pending(request: nil, expected: 1))
                wrote = true
            }
            if wrote {
                try connection.flush()
                inbox.withLock { $0.roundTrips += 1 }
                lastActivity = .now
                if waitingSince == nil { waitingSince = .now }
            }
            // Replies already read.
            while let reply = try connection.nextReply() {
                lastActivity = .now
                deliver(reply, &pending)
                waitingSince = pending.isEmpty ? nil : .now
            }
            if !pending.isEmpty, let since = waitingSince, ContinuousClock.now - since > url.timeout {
                throw .connection("no reply within \(url.timeout)")
            }
            // Wait for the socket or a new request; readable with nothing to read means closed.
            let wait: Duration = pending.isEmpty ? keepAlive : min(url.timeout, .milliseconds(100))
            wake.wait(socket: connection.descriptor, for: wait)
            if readable(connection.descriptor, within: .zero) { try connection.read() }
        }
    }

    private func deliver(_ reply: RedisValue, _ pending: inout Deque<Pending>) {
        if let subscriptions {
            // Pushed messages, and the answers to the thread's PINGs (["pong", ""]).
            if case let .array(parts) = reply, parts.count == 3, parts[0].text == "message", let channel = parts[1].text,
               case let .bulk(message) = parts[2]
            {
                subscriptions.onMessage(channel, message)
            } else if !pending.isEmpty {
                pending.removeFirst()
            }
            return
        }
        guard !pending.isEmpty else { return }
        pending[0].replies.append(reply)
        guard pending[0].replies.count == pending[0].expected else { return }
        let done = pending.removeFirst()
        done.request?.continuation.resume(returning: .success(done.replies))
    }

    private func readable(_ descriptor: Int32, within timeout: Duration) -> Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        let millis = Int32(clamping: timeout.wholeMilliseconds)
        return poll(&entry, 1, max(0, millis)) > 0
    }
}
