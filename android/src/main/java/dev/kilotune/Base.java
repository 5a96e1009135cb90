package dev.kilotune;

import java.util.Objects;

/**
 * A frozen base model loaded from ONNX: immutable and shared. Any number of threads may use one
 * base at once, and its trainers and sessions keep the model alive, so it may be closed before
 * them.
 */
public final class Base extends Handle {
    private Base(long handle) {
        super(handle);
    }

    /** Loads the ONNX model at {@code path}, weights as shipped. */
    public static Base load(String path) {
        return load(path, false);
    }

    /** Loads the ONNX model at {@code path}; {@code int8} quantizes its f32 weights at load. */
    public static Base load(String path, boolean int8) {
        return new Base(Native.baseLoad(Objects.requireNonNull(path, "path"), int8));
    }

    /** Loads a model from the bytes of an ONNX file (an app asset, say). */
    public static Base fromBytes(byte[] onnx, boolean int8) {
        return new Base(Native.baseLoadBytes(Objects.requireNonNull(onnx, "onnx"), int8));
    }

    /** The 32-byte SHA-256 fingerprint that binds deltas to this base. */
    public byte[] fingerprint() {
        return Native.baseFingerprint(handle());
    }

    @Override
    void free(long handle) {
        Native.baseFree(handle);
    }
}
