import CHiredis
#if canImport(Glibc)
import Glibc
#endif

// The only file that touches hiredis's pointers: one connection, its command buffer, its reader.

/// One hiredis connection (a blocking socket with send and receive timeouts). Not thread-safe:
/// exactly one thread owns it. Commands are appended to its output buffer and written together;
/// replies are read when the socket is readable and taken from its reader as they complete, so a
/// burst of commands costs one write and as few reads as the replies need.
final class HiredisConnection {
    private let context: UnsafeMutablePointer<redisContext>

    /// Connects, within `timeout`, which also bounds every later read and write.
    init(host: String, port: Int, timeout: Duration) throws(RedisError) {
        let time = Self.timeval(timeout)
        guard let context = redisConnectWithTimeout(host, Int32(clamping: port), time) else {
            throw .connection("cannot allocate a connection to \(host):\(port)")
        }
        guard context.pointee.err == 0 else {
            let reason = Self.errorText(context)
            redisFree(context)
            throw .connection("\(host):\(port): \(reason)")
        }
        self.context = context
        _ = redisEnableKeepAlive(context)
    }

    deinit { redisFree(context) }

    var descriptor: Int32 { context.pointee.fd }

    /// Adds a command to the output buffer (binary-safe arguments).
    func append(_ arguments: [[UInt8]]) throws(RedisError) {
        let lengths = arguments.map(\.count)
        // One buffer for every argument (and a last byte, so it is never empty); the pointers point into it.
        var joined = arguments.flatMap { $0 }
        joined.append(0)
        let status = joined.withUnsafeBufferPointer { bytes -> Int32 in
            let base = UnsafeRawPointer(bytes.baseAddress!).assumingMemoryBound(to: CChar.self)
            var offset = 0
            var pointers: [UnsafePointer<CChar>?] = []
            pointers.reserveCapacity(arguments.count)
            for length in lengths {
                pointers.append(base + offset)
                offset += length
            }
            return pointers.withUnsafeMutableBufferPointer { argv in
                lengths.withUnsafeBufferPointer { argvlen in
                    redisAppendCommandArgv(context, Int32(arguments.count), argv.baseAddress, argvlen.baseAddress)
                }
            }
        }
        guard status == REDIS_OK else { throw .connection(Self.errorText(context)) }
    }

    /// Writes the output buffer out.
    func flush() throws(RedisError) {
        var done: Int32 = 0
        while done == 0 {
            guard redisBufferWrite(context, &done) == REDIS_OK else { throw .connection(Self.errorText(context)) }
        }
    }

    /// Reads what the socket holds into the reader (call when it is readable: it blocks otherwise,
    /// up to the connection's timeout).
    func read() throws(RedisError) {
        guard redisBufferRead(context) == REDIS_OK else { throw .connection(Self.errorText(context)) }
    }

    /// The next complete reply, or nil when none has fully arrived.
    func nextReply() throws(RedisError) -> RedisValue? {
        var raw: UnsafeMutableRawPointer?
        guard redisGetReplyFromReader(context, &raw) == REDIS_OK else { throw .connection(Self.errorText(context)) }
        guard let raw else { return nil }
        defer { freeReplyObject(raw) }
        return Self.value(raw.assumingMemoryBound(to: redisReply.self).pointee)
    }

    private static func value(_ reply: redisReply) -> RedisValue {
        func bytes() -> [UInt8] {
            guard let text = reply.str, reply.len > 0 else { return [] }
            return Array(UnsafeRawBufferPointer(start: text, count: reply.len))
        }
        switch reply.type {
        case REDIS_REPLY_STRING: return .bulk(bytes())
        case REDIS_REPLY_STATUS: return .status(String(decoding: bytes(), as: UTF8.self))
        case REDIS_REPLY_ERROR: return .error(String(decoding: bytes(), as: UTF8.self))
        case REDIS_REPLY_INTEGER: return .integer(Int64(reply.integer))
        case REDIS_REPLY_ARRAY:
            guard let elements = reply.element else { return .array([]) }
            return .array((0..<reply.elements).map { index in elements[index].map { value($0.pointee) } ?? .null })
        default: return .null
        }
    }

    private static func errorText(_ context: UnsafeMutablePointer<redisContext>) -> String {
        let text = withUnsafeBytes(of: &context.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return text.isEmpty ? "error \(context.pointee.err)" : text
    }

    private static func timeval(_ duration: Duration) -> Glibc.timeval {
        let (seconds, attoseconds) = duration.components
        return Glibc.timeval(tv_sec: Int(max(0, seconds)), tv_usec: Int(max(0, attoseconds) / 1_000_000_000_000))
    }
}
