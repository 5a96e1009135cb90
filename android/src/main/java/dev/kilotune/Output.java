package dev.kilotune;

/** One output of a run, copied into Java arrays. */
public final class Output {
    /** The model's name for it. */
    public final String name;
    /** Its dims. */
    public final long[] shape;
    /** Its values, row-major. */
    public final float[] data;

    Output(String name, long[] shape, float[] data) {
        this.name = name;
        this.shape = shape;
        this.data = data;
    }
}
