import AsyncHTTPClient
import Foundation
import Warren
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import Testing
@_exported import WarrenTestSupport
import WarrenAMQP
#if canImport(Glibc)
import Glibc
#endif

enum TestEnvironment {
    struct NotConfigured: Error, CustomStringConvertible {
        var description: String { "WARREN_TEST_AMQP_URL is not set: run the tests with `make test`, which starts a private RabbitMQ" }
    }

    struct RedisNotConfigured: Error, CustomStringConvertible {
        var description: String { "WARREN_TEST_REDIS_URL is not set: run the tests with `make test`, which starts a private Redis" }
    }

    static var amqpURL: String {
        get throws {
            guard let text = ProcessInfo.processInfo.environment["WARREN_TEST_AMQP_URL"] else { throw NotConfigured() }
            return text
        }
    }

    /// The private Redis of `make test` (scripts/redis.sh): `redis://:password@127.0.0.1:port/0`.
    static var redisURL: String {
        get throws {
            guard let text = ProcessInfo.processInfo.environment["WARREN_TEST_REDIS_URL"] else { throw RedisNotConfigured() }
            return text
        }
    }

    /// The repository root (this file is Tests/WarrenServiceTests/Support.swift).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func binary(_ name: String) -> String { ChildProcess.builtProduct(name) }

    /// The environment of a `warren serve` child on `broker` (default: the test broker): this
    /// process's, with the queue, the handlers file, JSON logs, the operations server on a free
    /// port and no secrets directory.
    static func serveEnvironment(queue: String, handlersFile: String, broker: String? = nil) throws -> [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["WARREN_BROKER_URL"] = try broker ?? amqpURL
        environment["WARREN_QUEUE_NAME"] = queue
        environment["WARREN_HANDLERS_FILE"] = handlersFile
        environment["WARREN_HTTP_ADDRESS"] = "127.0.0.1:0"
        environment["WARREN_LOG_FORMAT"] = "json"
        environment["WARREN_SECRETS_DIR"] = "/nonexistent"
        return environment
    }

    static func unique(_ base: String = #function) -> String {
        "t-\(base.prefix { $0 != "(" }.lowercased())-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
    }
}

/// A stand-in for a team's existing HTTP service, on a free port of 127.0.0.1.
final class FakeService: Sendable {
    struct Call: Sendable {
        let path: String
        let headers: [String: String]
        let body: Data
    }

    private let calls = Locked<[Call]>([])
    private let running = Locked<(now: Int, most: Int)>((0, 0))
    private let finished = Locked<Set<String>>([])
    let port: Int
    private let task: Task<Void, Never>

    /// `respond` gets each call and returns the status and body (it may sleep).
    init(respond: @escaping @Sendable (Call) async -> (Int, String)) async throws {
        let router = Router()
        let calls = self.calls, finished = self.finished, running = self.running
        router.post("**") { request, context -> Response in
            let body = try await request.body.collect(upTo: 1 << 20)
            var headers: [String: String] = [:]
            for field in request.headers { headers[field.name.canonicalName] = field.value }
            let call = Call(path: request.uri.path, headers: headers, body: Data(body.readableBytesView))
            calls.withLock { $0.append(call) }
            running.withLock { $0.now += 1; $0.most = max($0.most, $0.now) }
            let (status, text) = await respond(call)
            running.withLock { $0.now -= 1 }
            if let id = headers["x-warren-job-id"], (200..<300).contains(status) { finished.withLock { _ = $0.insert(id) } }
            return Response(
                status: .init(code: status), headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
        }
        // Port 0: the system picks a free port and the server says which once it listens, so no
        // other socket can take the port between choosing and binding it.
        let bound = Locked<Int?>(nil), failure = Locked<(any Error)?>(nil)
        var quiet = Logger(label: "fake-service")
        quiet.logLevel = .critical
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in bound.withLock { $0 = channel.localAddress?.port } }, logger: quiet)
        task = Task {
            do { try await app.run() } catch { failure.withLock { $0 = error } }
        }
        try await waitUntil("the fake service to listen", within: 30) { bound.withLock { $0 } != nil || failure.withLock { $0 } != nil }
        if let error = failure.withLock({ $0 }) { throw error }
        port = bound.withLock { $0 }!
    }

    deinit { task.cancel() }

    var url: String { "http://127.0.0.1:\(port)" }
    var received: [Call] { calls.withLock { $0 } }
    /// The most calls it was answering at once.
    var mostAtOnce: Int { running.withLock { $0.most } }
    /// Job ids answered with 2xx.
    var completed: Set<String> { finished.withLock { $0 } }
}

/// GET on the operations server: status and body.
func get(_ url: String) async -> (Int, String)? {
    guard let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(5)),
          let body = try? await response.body.collect(upTo: 8 << 20) else { return nil }
    return (Int(response.status.code), String(buffer: body))
}
