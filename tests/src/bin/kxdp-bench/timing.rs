//! Part 1: timing one BPF_PROG_TEST_RUN call, and the checks every path makes.

use super::*;

/// Nanoseconds per packet, measured two ways.
#[derive(Clone, Copy)]
pub(crate) struct Sample {
    /// The kernel's per-repetition mean: it times the loop around the
    /// program alone and divides by `repeat` (whole ns, rounded down).
    pub(crate) kernel_ns: f64,
    /// Wall time of the whole call divided by `repeat`, as a cross-check. It
    /// includes the call's one-off set-up, which is large for XDP.
    pub(crate) wall_ns: f64,
}

/// One BPF_PROG_TEST_RUN call of `repeat` repetitions.
pub(crate) struct Timed {
    pub(crate) verdict: u32,
    /// The frame as the last repetition left it.
    pub(crate) out: Vec<u8>,
    pub(crate) sample: Sample,
}

pub(crate) fn time_test_run<P>(prog: &P, frame: &[u8], repeat: u32) -> anyhow::Result<Timed>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    time_test_run_in(prog, frame, None, repeat)
}

/// [`time_test_run`] with a context (e.g. the XDP ingress interface).
pub(crate) fn time_test_run_in<P>(
    prog: &P,
    frame: &[u8],
    ctx: Option<&[u8]>,
    repeat: u32,
) -> anyhow::Result<Timed>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + OUT_SLACK];
    let started = Instant::now();
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let wall = started.elapsed();
    out.truncate(result.data_size_out as usize);
    Ok(Timed {
        verdict: result.return_value,
        out,
        sample: Sample {
            kernel_ns: result.duration.as_nanos() as f64,
            wall_ns: wall.as_nanos() as f64 / f64::from(repeat),
        },
    })
}

/// A path to time. `run` makes one timed run and checks afterwards that
/// every repetition took the path; a check that fails stops the bench.
pub(crate) trait Case {
    fn run(&mut self) -> anyhow::Result<Sample>;
}

pub(crate) fn expect_frame(what: &str, got: &[u8], want: &[u8]) -> anyhow::Result<()> {
    ensure!(
        got == want,
        "{what}: the output frame is not the expected one\n got {got:02x?}\nwant {want:02x?}"
    );
    Ok(())
}

pub(crate) fn expect_verdict(what: &str, got: u32, want: u32) -> anyhow::Result<()> {
    ensure!(got == want, "{what}: verdict {got}, expected {want}");
    Ok(())
}

pub(crate) fn expect_no_drops(what: &str, dp: &Datapath) -> anyhow::Result<()> {
    let drops: u64 = DropReason::ALL.into_iter().map(|r| dp.drops(r)).sum();
    ensure!(drops == 0, "{what}: {drops} packets dropped");
    Ok(())
}

/// Runs `pod_ingress` once (repeat 1) and checks the result: set-up steps.
pub(crate) fn run_once(
    dp: &Datapath,
    program: &str,
    what: &str,
    frame: &[u8],
    want: &[u8],
) -> anyhow::Result<()> {
    let once = time_test_run(dp.program(program), frame, 1)?;
    expect_verdict(what, once.verdict, TC_ACT_OK)?;
    expect_frame(what, &once.out, want)
}

/// The frame after `repeat` steps of a 2-cycle `a → b → a → …`.
pub(crate) fn cycle_end<'a>(a: &'a [u8], b: &'a [u8], repeat: u32) -> &'a [u8] {
    if repeat.is_multiple_of(2) {
        a
    } else {
        b
    }
}

/// The mean `Sample` of `calls` calls of `one` (given each call's number):
/// for paths timed one call at a time.
pub(crate) fn mean_over_calls(
    calls: u32,
    mut one: impl FnMut(u32) -> anyhow::Result<Sample>,
) -> anyhow::Result<Sample> {
    let mut total = Sample {
        kernel_ns: 0.0,
        wall_ns: 0.0,
    };
    for call in 0..calls {
        let sample = one(call)?;
        total.kernel_ns += sample.kernel_ns;
        total.wall_ns += sample.wall_ns;
    }
    let calls = f64::from(calls);
    Ok(Sample {
        kernel_ns: total.kernel_ns / calls,
        wall_ns: total.wall_ns / calls,
    })
}
