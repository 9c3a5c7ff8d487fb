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

    static var amqpURL: String {
        get throws {
            guard let text = ProcessInfo.processInfo.environment["WARREN_TEST_AMQP_URL"] else { throw NotConfigured() }
            return text
        }
    }

    /// The repository root (this file is Tests/WarrenServiceTests/Support.swift).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func binary(_ name: String) -> String { ChildProcess.builtProduct(name) }

    static func unique(_ base: String = #function) -> String {
        "t-\(base.prefix { $0 != "(" }.lowercased())-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
    }

    /// A TCP port nobody listens on now.
    static func freePort() -> Int {
        for _ in 0..<100 {
            let port = Int.random(in: 20_000...60_000)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if bound == 0 { return port }
        }
        return 0
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
    private let task: Task<Void, any Error>

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
        let port = TestEnvironment.freePort()
        self.port = port
        var quiet = Logger(label: "fake-service")
        quiet.logLevel = .critical
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)), logger: quiet)
        task = Task { try await app.runService() }
        try await waitUntil("the fake service to listen") {
            (try? await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(port)/"), timeout: .seconds(1))) != nil
        }
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
