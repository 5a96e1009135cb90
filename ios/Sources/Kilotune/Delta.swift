import KilotuneFFI

/// A user's trained parameters, bound to the base they were trained on. Immutable; sessions
/// copy what they need.
public final class Delta: @unchecked Sendable {
    public enum Precision: UInt32 { case f32 = 0, f16 = 1, int8 = 2 }

    let handle: OpaquePointer

    init(handle: OpaquePointer) { self.handle = handle }

    /// Loads the delta at `path`; one trained on another base throws `deltaWrongBase`.
    public init(base: Base, path: String) throws {
        var out: OpaquePointer?
        try check(kt_delta_load(base.handle, path, &out))
        handle = out!
    }

    /// Saves the delta at `path`, atomically.
    public func save(path: String, precision: Precision = .f32) throws {
        try check(kt_delta_save(handle, path, precision.rawValue))
    }

    /// The training steps recorded in the delta.
    public func steps() throws -> UInt64 {
        var n: UInt64 = 0
        try check(kt_delta_steps(handle, &n))
        return n
    }

    deinit { kt_delta_free(handle) }
}
