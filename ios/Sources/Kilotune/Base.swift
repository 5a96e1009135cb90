import KilotuneFFI

/// A frozen base model loaded from ONNX: immutable and shared. Any number of threads may use
/// one base; its trainers and sessions keep the model alive.
public final class Base: @unchecked Sendable {
    let handle: OpaquePointer

    /// Loads the ONNX model at `path`; `int8` quantizes its f32 weights at load.
    public init(path: String, int8: Bool = false) throws {
        var out: OpaquePointer?
        try check(kt_base_load(path, UInt32(int8 ? KT_WEIGHTS_INT8 : KT_WEIGHTS_AS_SHIPPED), &out))
        handle = out!
    }

    /// The 32-byte SHA-256 fingerprint that binds deltas to this base.
    public func fingerprint() throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 32)
        try check(kt_base_fingerprint(handle, &bytes))
        return bytes
    }

    deinit { kt_base_free(handle) }
}
