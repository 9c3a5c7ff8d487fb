import Foundation
import Synchronization
import Testing
@testable import WarrenRedis
import WarrenTestSupport

/// The private Redis server `make test` starts (scripts/redis.sh).
enum TestRedis {
    struct NotConfigured: Error, CustomStringConvertible {
        var description: String { "WARREN_TEST_REDIS_URL is not set: run the tests with `make test`, which starts a private Redis" }
    }

    static var url: RedisURL {
        get throws {
            guard let text = ProcessInfo.processInfo.environment["WARREN_TEST_REDIS_URL"] else { throw NotConfigured() }
            return try RedisURL(text)
        }
    }

    /// Runs scripts/redis.sh `verb` on the test server's folder (stop, start, kill).
    static func control(_ verb: String) async throws {
        guard let dir = ProcessInfo.processInfo.environment["WARREN_TEST_REDIS_DIR"] else { throw NotConfigured() }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let script = try ChildProcess("/bin/bash", [root.appendingPathComponent("scripts/redis.sh").path, verb, dir])
        #expect(try await script.exit(within: 30) == .exited(0), "scripts/redis.sh \(verb): \(script.output)")
    }

    /// A connected client; closed by the caller.
    static func client(_ name: String = "test", url: RedisURL? = nil) async throws -> RedisClient {
        let client = RedisClient(url: try url ?? self.url, name: name)
        try await client.waitUntilConnected(within: .seconds(10))
        return client
    }

    /// A key of this test's own.
    static func key(_ name: String) -> String { "warren-test:\(name):\(UInt32.random(in: 0...UInt32.max))" }
}

@Suite("Redis URL")
struct RedisURLTests {
    @Test func parsesWithDefaultsAndRefusesWhatItCannotUse() throws {
        let plain = try RedisURL("redis://localhost")
        #expect(plain.host == "localhost" && plain.port == 6379 && plain.database == 0 && plain.password == nil && plain.user == nil)
        #expect(plain.timeout == .seconds(2))
        let full = try RedisURL("redis://app:p%40ss@cache.internal:6380/3?timeout=500")
        #expect(full.user == "app" && full.password == "p@ss" && full.host == "cache.internal" && full.port == 6380)
        #expect(full.database == 3 && full.timeout == .milliseconds(500))
        #expect(!full.description.contains("p@ss") && full.description.contains("***"))
        #expect(try RedisURL("redis://:secret@h/").password == "secret")
        #expect(try RedisURL("redis://:secret@h/").user == nil)
        for bad in [
            "rediss://h", "http://h", "redis://h:0", "redis://h:70000", "redis://h/x", "redis://h/99999999", "redis://h/?timeout=0",
            "redis://h/?timeout=9999999999", "redis://h/?tls=1", "redis://:p%C3@h", "not a url",
        ] {
            #expect(throws: RedisError.self, "\(bad)") { try RedisURL(bad) }
        }
        #expect(RedisURL.redacted("redis://:secret@h:1/0") == "redis://:***@h:1/0")
        #expect(RedisURL.redacted("redis://u:secret@h") == "redis://u:***@h")
        // One part is the password (as redis-cli -u reads it), and never shown.
        let onePart = try RedisURL("redis://s3cret@h:1/0")
        #expect(onePart.password == "s3cret" && onePart.user == nil)
        #expect(onePart.description == "redis://***@h:1/0")
        #expect(RedisURL.redacted("redis://s3cret@h:1/0?x=1") == "redis://***@h:1/0?x=1")
        #expect(try RedisURL("redis://:p@h").description == "redis://***@h:6379/0")
    }
}

@Suite("Redis client against Redis")
struct RedisClientTests {
    @Test(.timeLimit(.minutes(4)))
    func commandsRoundTripBinarySafeAndPipelinedInOrder() async throws {
        try await ServerAccess.redis.using {
            let client = try await TestRedis.client()
            let key = TestRedis.key("bytes")
            let bytes: [UInt8] = [0, 1, 2, 0xFF, 0x0D, 0x0A, 0x24, 0x2A, 0]
            #expect(try await client.command(RedisCommand("SET", key, bytes)) == .status("OK"))
            #expect(try await client.command(RedisCommand("GET", key)) == .bulk(bytes))
            #expect(try await client.command(RedisCommand("GET", key + ":missing")) == .null)
            // 1,000 commands in one pipeline: replies in order.
            let counter = TestRedis.key("counter")
            let replies = try await client.pipeline((0..<1_000).map { _ in RedisCommand("INCR", counter) })
            #expect(replies == (1...1_000).map { .integer(Int64($0)) })
            // An error reply is a value in a pipeline, and thrown by `command`.
            let mixed = try await client.pipeline([RedisCommand("INCR", key), RedisCommand("GET", counter)])
            guard case let .error(text) = mixed[0] else { Issue.record("INCR of a non-number answered \(mixed[0])"); return }
            #expect(text.hasPrefix("ERR"))
            #expect(mixed[1] == .bulk(Array("1000".utf8)))
            await #expect(throws: RedisError.self) { try await client.command(RedisCommand("LPUSH", key, "x")) }
            let list = TestRedis.key("list")
            _ = try await client.command(RedisCommand("RPUSH", list, "a", "b", "c"))
            #expect(try await client.command(RedisCommand("LRANGE", list, 0, -1)) == .array(["a", "b", "c"].map { .bulk(Array($0.utf8)) }))
            _ = try await client.command(RedisCommand("DEL", key, counter, list))
            await client.close()
            #expect(client.status == .closed)
            await #expect(throws: RedisError.closed) { try await client.command(RedisCommand("PING")) }
        }
    }

    /// Many tasks at once, each with its own keys: every reply goes to the request that asked.
    @Test(.timeLimit(.minutes(4)))
    func concurrentRequestsGetTheirOwnReplies() async throws {
        try await ServerAccess.redis.using {
            let client = try await TestRedis.client("concurrent")
            let prefix = TestRedis.key("tasks")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for task in 0..<50 {
                    group.addTask {
                        for round in 0..<40 {
                            let key = "\(prefix):\(task)"
                            let replies = try await client.pipeline([RedisCommand("SET", key, "\(task)-\(round)"), RedisCommand("GET", key)])
                            #expect(replies == [.status("OK"), .bulk(Array("\(task)-\(round)".utf8))])
                        }
                    }
                }
                try await group.waitForAll()
            }
            _ = try await client.command(RedisCommand("DEL", arguments: (0..<50).map { "\(prefix):\($0)" }))
            await client.close()
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func aWrongPasswordSaysSoAndKeepsTrying() async throws {
        try await ServerAccess.redis.using {
            var url = try TestRedis.url
            url.password = "not-the-password"
            let client = RedisClient(url: url, name: "wrong-password")
            try await waitUntil("the login is refused", within: 20) {
                if case .down = client.status { true } else { false }
            }
            guard case let .down(why) = client.status else { Issue.record("status \(client.status)"); return }
            #expect(why.contains("WRONGPASS") || why.contains("invalid password"), "\(why)")
            #expect(!why.contains("not-the-password"), "the password never shows: \(why)")
            do {
                try await client.waitUntilConnected(within: .milliseconds(200))
                Issue.record("connected with a wrong password")
            } catch {
                #expect("\(error)".contains("WRONGPASS") || "\(error)".contains("invalid password"), "the wait says why: \(error)")
            }
            await #expect(throws: RedisError.self) { try await client.command(RedisCommand("PING")) }
            await client.close()
        }
    }

    /// The server goes away and comes back: requests fail at once meanwhile (nothing waits on a
    /// dead server), the client reconnects by itself, and a subscriber subscribes again.
    @Test(.timeLimit(.minutes(4)))
    func survivesARestartAndResubscribes() async throws {
        try await ServerAccess.redis.using(exclusive: true) {
            let statuses = Mutex<[RedisClient.Status]>([])
            let client = RedisClient(url: try TestRedis.url, name: "restart") { status in statuses.withLock { $0.append(status) } }
            try await client.waitUntilConnected(within: .seconds(10))
            let channel = TestRedis.key("channel")
            let received = Mutex<[String]>([])
            let subscriber = RedisClient(url: try TestRedis.url, name: "restart-subscriber", subscribingTo: [channel]) { from, message in
                if from == channel { received.withLock { $0.append(String(decoding: message, as: UTF8.self)) } }
            }
            try await subscriber.waitUntilConnected(within: .seconds(10))
            try await waitUntil("the first message arrives", within: 10) {
                _ = try? await client.command(RedisCommand("PUBLISH", channel, "before"))
                return received.withLock { $0.contains("before") }
            }

            try await TestRedis.control("stop")
            try await waitUntil("the client notices", within: 15) {
                if case .down = client.status { return true }
                _ = try? await client.command(RedisCommand("PING"))
                return false
            }
            let started = ContinuousClock.now
            await #expect(throws: RedisError.self) { try await client.command(RedisCommand("PING")) }
            #expect(ContinuousClock.now - started < .seconds(1), "a request while down fails at once")

            try await TestRedis.control("start")
            try await client.waitUntilConnected(within: .seconds(15))
            #expect(try await client.command(RedisCommand("PING")) == .status("PONG"))
            try await waitUntil("the subscriber is back", within: 15) {
                _ = try? await client.command(RedisCommand("PUBLISH", channel, "after"))
                return received.withLock { $0.contains("after") }
            }
            let seen = statuses.withLock { $0 }
            #expect(seen.contains(.connected) && seen.contains { if case .down = $0 { true } else { false } }, "\(seen)")
            await subscriber.close()
            await client.close()
        }
    }
}
