import Foundation
import Warren
#if canImport(Glibc)
import Glibc
#endif

/// A TCP proxy on 127.0.0.1 in front of the broker that can freeze: from then on it reads both
/// sides and passes nothing on, keeping the connections open. To the client that is a broker that
/// stopped answering (a half-open connection, or one blocking publishers under a resource alarm).
final class FreezingProxy: Sendable {
    let port: Int
    private let listener: Int32
    private let frozen = Locked(false)

    init(targetPort: Int) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        guard bound == 0, listen(listener, 16) == 0 else { throw TimedOut(description: "the proxy could not listen: errno \(errno)") }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        port = Int(UInt16(bigEndian: address.sin_port))
        let frozen = self.frozen
        Thread.detachNewThread {
            while true {
                let client = accept(listener, nil, nil)
                guard client >= 0 else { return }
                let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                var target = sockaddr_in()
                target.sin_family = sa_family_t(AF_INET)
                target.sin_addr.s_addr = inet_addr("127.0.0.1")
                target.sin_port = UInt16(targetPort).bigEndian
                let connected = withUnsafePointer(to: &target) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
                guard connected == 0 else {
                    close(client)
                    close(upstream)
                    continue
                }
                Self.pump(from: client, to: upstream, frozen: frozen)
                Self.pump(from: upstream, to: client, frozen: frozen)
            }
        }
    }

    /// Stops passing bytes on, in both directions, for good.
    func freeze() { frozen.withLock { $0 = true } }

    func stop() { shutdown(listener, Int32(SHUT_RDWR)) }

    private static func pump(from source: Int32, to destination: Int32, frozen: Locked<Bool>) {
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
                guard count > 0 else { break }
                if frozen.withLock({ $0 }) { continue }
                var sent = 0
                while sent < count {
                    let written = buffer.withUnsafeBytes { write(destination, $0.baseAddress! + sent, count - sent) }
                    guard written > 0 else { return }
                    sent += written
                }
            }
            Glibc.shutdown(destination, Int32(SHUT_WR))
        }
    }
}
