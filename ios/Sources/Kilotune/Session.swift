import KilotuneFFI

/// One output of a run, copied into Swift arrays.
public struct Output {
    public let name: String
    public let shape: [Int]
    public let data: [Float]
}

/// Runs a base with one user's delta, or none. Not for concurrent use: one call at a time.
public final class Session {
    let handle: OpaquePointer
    public let base: Base

    /// A session over `base` with `delta` (nil: the plain base) on `threads` threads (0: one per core).
    public init(base: Base, delta: Delta? = nil, threads: UInt32 = 0) throws {
        var out: OpaquePointer?
        try check(kt_session_new(base.handle, delta?.handle, threads, &out))
        handle = out!
        self.base = base
    }

    /// Switches to another user's delta (nil: the plain base).
    public func setDelta(_ delta: Delta?) throws {
        try check(kt_session_set_delta(handle, delta?.handle))
    }

    /// Runs the model on a batch (labels are ignored); every output, in the model's order.
    public func run(_ batch: Batch) throws -> [Output] {
        var outs: OpaquePointer?
        try batch.withTokens { t in
            var t = t
            try check(kt_session_run(handle, &t, &outs))
        }
        defer { kt_outputs_free(outs) }
        var count = 0
        try check(kt_outputs_count(outs, &count))
        return try (0..<count).map { i in
            var o = kt_output()
            try check(kt_outputs_get(outs, i, &o))
            return Output(name: String(cString: o.name),
                          shape: Array(UnsafeBufferPointer(start: o.shape, count: o.rank)),
                          data: Array(UnsafeBufferPointer(start: o.data, count: o.len)))
        }
    }

    deinit { kt_session_free(handle) }
}
