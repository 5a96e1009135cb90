package dev.kilotune;

import java.util.Objects;

/**
 * A user's trained parameters, bound to the base they were trained on. Immutable: any number of
 * threads may use one at once. Sessions copy what they need, so a delta may be closed while
 * sessions made with it live.
 */
public final class Delta extends Handle {
    /** How a delta's values are stored in a file. */
    public enum Precision { F32, F16, INT8 }

    Delta(long handle) {
        super(handle);
    }

    /** Loads the delta at {@code path}; a delta trained on another base is refused (DELTA_WRONG_BASE). */
    public static Delta load(Base base, String path) {
        Objects.requireNonNull(base, "base");
        return new Delta(Native.deltaLoad(base.handle(), Objects.requireNonNull(path, "path")));
    }

    /** Saves this delta at {@code path} as f32, atomically. */
    public void save(String path) {
        save(path, Precision.F32);
    }

    /** Saves this delta at {@code path} with {@code precision}, atomically. */
    public void save(String path, Precision precision) {
        Native.deltaSave(handle(), Objects.requireNonNull(path, "path"), precision.ordinal());
    }

    /** The training steps recorded in the delta. */
    public long steps() {
        return Native.deltaSteps(handle());
    }

    @Override
    void free(long handle) {
        Native.deltaFree(handle);
    }
}
