import AsyncHTTPClient
import Foundation
import Instrumentation
import NIOCore
import NIOHTTP1
import Warren

/// Runs a job by sending its payload to an existing service.
///
/// The request carries the job id, name and attempt in `X-Warren-Job-Id`, `X-Warren-Job-Name` and
/// `X-Warren-Attempt`, and a W3C `traceparent` (the producer's trace, or a new one). A 2xx answer
/// completes the job with the response body as its result; 408, 429, 5xx, connection errors and
/// timeouts fail the attempt (it is retried with backoff); any other status dead-letters the job at
/// once with the status and the start of the body as the reason.
///
/// Errors show the URL redacted (see `Redactor`), and never the user-info password, the hidden query
/// values or a credential header's value, even when the service's answer repeats them.
struct HTTPHandler: Sendable {
    static let maxResponseBytes = 8 << 20

    let action: HandlersFile.HTTPAction
    let timeout: Duration
    let client: HTTPClient
    var redactor = Redactor()

    /// The client handlers share. A refused connection fails its requests at once (the attempt is
    /// retried with the job's backoff) instead of being tried again until the connect timeout.
    static func makeClient() -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout.connect = .seconds(10)
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }

    /// What errors must not show: the URL's hidden parts and the values of credential headers
    /// (a name containing `auth` or `cookie`, or one of the redacted parameter words, such as
    /// `X-Api-Key`); other header values, like `Content-Type`, stay readable.
    var secrets: [String] {
        let credentials = action.headers.filter { name, _ in
            let lower = name.lowercased()
            return lower.contains("auth") || lower.contains("cookie") || redactor.hides(parameter: name)
        }
        let headerValues = credentials.values.flatMap { value in
            // `Bearer t0k`: the credential alone may show up too.
            [value] + (value.split(separator: " ", maxSplits: 1).dropFirst().map(String.init))
        }
        return redactor.secrets(inURL: action.url.absoluteString) + headerValues
    }

    func run(_ payload: Data, _ context: JobContext) async throws -> Data {
        do {
            return try await attempt(payload, context)
        } catch let error as HTTPHandlerError {
            throw HTTPHandlerError(Redactor.scrub(error.description, hiding: secrets))
        } catch let error as JobRejected {
            throw JobRejected(Redactor.scrub(error.reason, hiding: secrets))
        }
    }

    private func attempt(_ payload: Data, _ context: JobContext) async throws -> Data {
        var request = HTTPClientRequest(url: action.url.absoluteString)
        request.method = HTTPMethod(rawValue: action.method)
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "warren")
        for (name, value) in action.headers { request.headers.replaceOrAdd(name: name, value: value) }
        request.headers.replaceOrAdd(name: "X-Warren-Job-Id", value: context.id.rawValue)
        request.headers.replaceOrAdd(name: "X-Warren-Job-Name", value: context.name)
        request.headers.replaceOrAdd(name: "X-Warren-Attempt", value: "\(context.attempt)")
        // The attempt's span (a child of the producer's trace, or a new trace) as `traceparent`.
        context.injectTraceContext(into: &request.headers, using: HeadersInjector())
        request.body = .bytes(ByteBuffer(bytes: payload))
        let target = "\(action.method) \(redactor.url(action.url.absoluteString))"
        let response: HTTPClientResponse
        let body: ByteBuffer
        do {
            response = try await client.execute(request, timeout: .milliseconds(max(1, timeout.wholeMilliseconds)))
            body = try await response.body.collect(upTo: Self.maxResponseBytes)
        } catch let error as HTTPClientError where error == .connectTimeout {
            throw HTTPHandlerError("\(target) failed: no connection within 10 s")
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout {
            throw HTTPHandlerError("\(target) timed out after \(timeout)")
        } catch let error as NIOTooManyBytesError {
            throw HTTPHandlerError("\(target) answered with more than \(Self.maxResponseBytes) bytes: \(error)")
        } catch is CancellationError {
            throw CancellationError()
        } catch let error as IOError {
            // NIO describes a refused connect as "connection reset (error set): …": say what the system said.
            throw HTTPHandlerError("\(target) failed: could not connect: \(String(cString: strerror(error.errnoCode))) (errno \(error.errnoCode))")
        } catch {
            throw HTTPHandlerError("\(target) failed: \(error)")
        }
        let status = Int(response.status.code)
        let data = Data(body.readableBytesView)
        switch status {
        case 200..<300:
            return data
        case 408, 429, 500..<600:
            throw HTTPHandlerError("\(target) answered \(status)\(Self.excerpt(data))")
        case 400..<500:
            throw JobRejected("\(target) answered \(status)\(Self.excerpt(data))")
        default:
            throw HTTPHandlerError("\(target) answered \(status)\(Self.excerpt(data))")
        }
    }

    /// The start of a body, for an error message.
    static func excerpt(_ data: Data) -> String {
        guard !data.isEmpty else { return "" }
        let text = String(decoding: data.prefix(500), as: UTF8.self).replacingOccurrences(of: "\n", with: " ")
        return ": \(text)\(data.count > 500 ? "…" : "")"
    }
}

struct HTTPHandlerError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Trace context into HTTP headers (replacing any of the same name).
struct HeadersInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout HTTPHeaders) { carrier.replaceOrAdd(name: key, value: value) }
}
