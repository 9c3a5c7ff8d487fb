/// Tests share the servers that `make test` starts (every test target runs in one process): a test
/// that stops or restarts one needs it alone, and every test that uses it, in any target, says so
/// here. A test's time limit includes waiting here (with a restart test waiting, every later user
/// waits for all earlier ones, long tests included), so every test that uses a server has a limit
/// of at least 4 minutes: with 2 minutes, four once ran out waiting.
public actor ServerAccess {
    /// The RabbitMQ 4.0 node.
    public static let rabbitMQ = ServerAccess()
    /// The Redis server.
    public static let redis = ServerAccess()
    private var users = 0
    private var exclusive = false
    private var waiting: [(exclusive: Bool, continuation: CheckedContinuation<Void, Never>)] = []

    public func acquire(exclusive wantsExclusive: Bool) async {
        if canEnter(wantsExclusive), waiting.isEmpty {
            enter(wantsExclusive)
            return
        }
        await withCheckedContinuation { waiting.append((wantsExclusive, $0)) }
    }

    public func release(exclusive wasExclusive: Bool) {
        if wasExclusive { exclusive = false } else { users -= 1 }
        // Wake in order: shared users together, an exclusive one alone.
        while let first = waiting.first, canEnter(first.exclusive) {
            waiting.removeFirst()
            enter(first.exclusive)
            first.continuation.resume()
        }
    }

    private func canEnter(_ wantsExclusive: Bool) -> Bool {
        wantsExclusive ? (!exclusive && users == 0) : !exclusive
    }

    private func enter(_ wantsExclusive: Bool) {
        if wantsExclusive { exclusive = true } else { users += 1 }
    }

    /// Runs `body` while using the server; `exclusive` when it stops or restarts it.
    public nonisolated func using<T: Sendable>(exclusive: Bool = false, _ body: () async throws -> T) async throws -> T {
        await acquire(exclusive: exclusive)
        do {
            let value = try await body()
            await release(exclusive: exclusive)
            return value
        } catch {
            await release(exclusive: exclusive)
            throw error
        }
    }
}

/// Runs `body` while using the test broker; `exclusive` when it stops or restarts it.
public func usingBroker<T: Sendable>(exclusive: Bool = false, _ body: () async throws -> T) async throws -> T {
    try await ServerAccess.rabbitMQ.using(exclusive: exclusive, body)
}
