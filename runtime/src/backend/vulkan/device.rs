//! The Vulkan device, its compute pipelines, and recording dispatches.
//!
//! One device per process (the first with a compute queue; on a machine without a GPU that is
//! Mesa's lavapipe, a CPU implementation of Vulkan). Every buffer holds 32-bit words: f32
//! values travel as their bits, packed bytes four to a word, so one buffer type serves every
//! kernel.

use std::sync::{Arc, OnceLock};

use vulkano::buffer::{Buffer, BufferCreateInfo, BufferUsage, Subbuffer};
use vulkano::command_buffer::allocator::StandardCommandBufferAllocator;
use vulkano::command_buffer::{AutoCommandBufferBuilder, CommandBufferUsage, PrimaryAutoCommandBuffer};
use vulkano::descriptor_set::allocator::StandardDescriptorSetAllocator;
use vulkano::descriptor_set::{DescriptorSet, WriteDescriptorSet};
use vulkano::device::{Device, DeviceCreateInfo, Queue, QueueCreateInfo, QueueFlags};
use vulkano::instance::{Instance, InstanceCreateFlags, InstanceCreateInfo};
use vulkano::memory::allocator::{AllocationCreateInfo, MemoryTypeFilter, StandardMemoryAllocator};
use vulkano::pipeline::compute::ComputePipelineCreateInfo;
use vulkano::pipeline::layout::PipelineDescriptorSetLayoutCreateInfo;
use vulkano::pipeline::{ComputePipeline, Pipeline, PipelineBindPoint, PipelineLayout, PipelineShaderStageCreateInfo};
use vulkano::shader::{ShaderModule, ShaderModuleCreateInfo};
use vulkano::sync::GpuFuture;
use vulkano::VulkanLibrary;

use crate::error::{Error, Result};

pub(super) fn err(e: impl std::fmt::Display) -> Error {
    Error::Backend { backend: "vulkan", reason: e.to_string() }
}

/// The compute kernels, in the order of [`SPIRV`].
#[derive(Clone, Copy, Debug)]
pub(super) enum Kernel {
    GemmF32,
    GemmU8I8,
    LayerNorm,
    Gelu,
    Add,
    Attention,
    LayerNormBackward,
    AttentionBackward,
}

/// SPIR-V compiled by build.rs with glslangValidator from `shaders/*.comp`.
const SPIRV: [&[u8]; 8] = [
    include_bytes!(concat!(env!("OUT_DIR"), "/gemm_f32.spv")),
    include_bytes!(concat!(env!("OUT_DIR"), "/gemm_u8i8.spv")),
    include_bytes!(concat!(env!("OUT_DIR"), "/layer_norm.spv")),
    include_bytes!(concat!(env!("OUT_DIR"), "/gelu.spv")),
    include_bytes!(concat!(env!("OUT_DIR"), "/add.spv")),
    include_bytes!(concat!(env!("OUT_DIR"), "/attention.spv")),
    include_bytes!(concat!(env!("OUT_DIR"), "/layer_norm_backward.spv")),
    include_bytes!(concat!(env!("OUT_DIR"), "/attention_backward.spv")),
];

/// A buffer of 32-bit words on the device.
pub(super) type Buf = Subbuffer<[u32]>;

/// The device, its queue, allocators and one pipeline per kernel.
pub(super) struct Gpu {
    device: Arc<Device>,
    queue: Arc<Queue>,
    memory: Arc<StandardMemoryAllocator>,
    sets: Arc<StandardDescriptorSetAllocator>,
    commands: Arc<StandardCommandBufferAllocator>,
    pipelines: Vec<Arc<ComputePipeline>>,
    /// The device's name, as the driver reports it.
    pub(super) name: String,
}

static GPU: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();

impl Gpu {
    /// The process's device, created on first use.
    pub(super) fn get() -> Result<Arc<Gpu>> {
        GPU.get_or_init(|| Gpu::create().map(Arc::new).map_err(|e| e.to_string())).clone().map_err(err)
    }

    fn create() -> Result<Gpu> {
        let library = VulkanLibrary::new().map_err(|e| err(format!("no Vulkan loader ({e}); install libvulkan1 and a driver")))?;
        let instance = Instance::new(
            library,
            InstanceCreateInfo { flags: InstanceCreateFlags::ENUMERATE_PORTABILITY, ..Default::default() },
        )
        .map_err(err)?;
        let (physical, family) = instance
            .enumerate_physical_devices()
            .map_err(err)?
            .find_map(|p| {
                let f = p.queue_family_properties().iter().position(|q| q.queue_flags.intersects(QueueFlags::COMPUTE))?;
                Some((p, f as u32))
            })
            .ok_or_else(|| err("no Vulkan device with a compute queue (lavapipe: apt mesa-vulkan-drivers)"))?;
        let name = physical.properties().device_name.clone();
        let (device, mut queues) = Device::new(
            physical,
            DeviceCreateInfo { queue_create_infos: vec![QueueCreateInfo { queue_family_index: family, ..Default::default() }], ..Default::default() },
        )
        .map_err(err)?;
        let queue = queues.next().ok_or_else(|| err("the device returned no queue"))?;
        let memory = Arc::new(StandardMemoryAllocator::new_default(device.clone()));
        let sets = Arc::new(StandardDescriptorSetAllocator::new(device.clone(), Default::default()));
        let commands = Arc::new(StandardCommandBufferAllocator::new(device.clone(), Default::default()));
        let mut pipelines = Vec::with_capacity(SPIRV.len());
        for bytes in SPIRV {
            let words: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            // SAFETY: the words are SPIR-V that glslangValidator produced from our own shaders at
            // build time (build.rs); vulkano still checks the module's capabilities and layout.
            let module = unsafe { ShaderModule::new(device.clone(), ShaderModuleCreateInfo::new(&words)) }.map_err(err)?;
            let entry = module.entry_point("main").ok_or_else(|| err("a shader has no `main`"))?;
            let stage = PipelineShaderStageCreateInfo::new(entry);
            let layout = PipelineLayout::new(
                device.clone(),
                PipelineDescriptorSetLayoutCreateInfo::from_stages([&stage]).into_pipeline_layout_create_info(device.clone()).map_err(err)?,
            )
            .map_err(err)?;
            pipelines.push(ComputePipeline::new(device.clone(), None, ComputePipelineCreateInfo::stage_layout(stage, layout)).map_err(err)?);
        }
        Ok(Gpu { device, queue, memory, sets, commands, pipelines, name })
    }

    /// A device buffer holding `words` (at least one word: Vulkan has no empty buffers).
    pub(super) fn upload(&self, words: impl ExactSizeIterator<Item = u32>) -> Result<Buf> {
        let words: Vec<u32> = if words.len() == 0 { vec![0] } else { words.collect() };
        Buffer::from_iter(
            self.memory.clone(),
            BufferCreateInfo { usage: BufferUsage::STORAGE_BUFFER, ..Default::default() },
            AllocationCreateInfo {
                memory_type_filter: MemoryTypeFilter::PREFER_DEVICE | MemoryTypeFilter::HOST_RANDOM_ACCESS,
                ..Default::default()
            },
            words,
        )
        .map_err(err)
    }

    /// f32 values as a device buffer.
    pub(super) fn upload_f32(&self, v: &[f32]) -> Result<Buf> {
        self.upload(v.iter().map(|x| x.to_bits()))
    }

    /// A device buffer of `len` zero words.
    pub(super) fn zeros(&self, len: usize) -> Result<Buf> {
        self.upload(std::iter::repeat_n(0u32, len))
    }

    /// Reads `len` f32 values back.
    pub(super) fn read_f32(&self, b: &Buf, len: usize) -> Result<Vec<f32>> {
        let g = b.read().map_err(err)?;
        Ok(g.iter().take(len).map(|&w| f32::from_bits(w)).collect())
    }

    /// Starts recording a batch of dispatches.
    pub(super) fn batch(&self) -> Result<Batch<'_>> {
        let cb = AutoCommandBufferBuilder::primary(self.commands.clone(), self.queue.queue_family_index(), CommandBufferUsage::OneTimeSubmit)
            .map_err(err)?;
        Ok(Batch { gpu: self, cb })
    }
}

/// Dispatches recorded into one command buffer; vulkano inserts the barriers between a
/// dispatch that writes a buffer and a later one that reads it.
pub(super) struct Batch<'g> {
    gpu: &'g Gpu,
    cb: AutoCommandBufferBuilder<PrimaryAutoCommandBuffer>,
}

impl Batch<'_> {
    /// Records `kernel` over `groups` workgroups with `buffers` at bindings 0.. and the push
    /// constants `push` (the shader's block, word for word).
    pub(super) fn dispatch<const N: usize>(&mut self, kernel: Kernel, buffers: &[&Buf], push: [u32; N], groups: [u32; 3]) -> Result<()> {
        let pipeline = &self.gpu.pipelines[kernel as usize];
        let layout = pipeline.layout().clone();
        let set_layout = layout.set_layouts().first().ok_or_else(|| err("a pipeline without descriptor sets"))?.clone();
        let writes = buffers.iter().enumerate().map(|(i, b)| WriteDescriptorSet::buffer(i as u32, (*b).clone()));
        let set = DescriptorSet::new(self.gpu.sets.clone(), set_layout, writes, []).map_err(err)?;
        self.cb.bind_pipeline_compute(pipeline.clone()).map_err(err)?;
        self.cb.bind_descriptor_sets(PipelineBindPoint::Compute, layout.clone(), 0, set).map_err(err)?;
        self.cb.push_constants(layout, 0, push).map_err(err)?;
        // SAFETY: every shader checks its global invocation id against the sizes it is given
        // before reading or writing, and each buffer bound here is at least as long as those
        // sizes say (the callers in kernels.rs size them from the same numbers).
        unsafe { self.cb.dispatch(groups) }.map_err(err)?;
        Ok(())
    }

    /// Submits the batch and waits for it to finish.
    pub(super) fn run(self) -> Result<()> {
        let cb = self.cb.build().map_err(err)?;
        vulkano::sync::now(self.gpu.device.clone())
            .then_execute(self.gpu.queue.clone(), cb)
            .map_err(err)?
            .then_signal_fence_and_flush()
            .map_err(err)?
            .wait(None)
            .map_err(err)
    }
}

/// Workgroups of `size` covering `n` items.
pub(super) fn groups(n: usize, size: usize) -> u32 {
    n.div_ceil(size).max(1) as u32
}
