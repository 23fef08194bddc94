//! Crash recovery of a cluster worker: a worker that loses a peer starts
//! again (same process, same command line) and the cluster recovers from the
//! last complete snapshot once the lost worker is back.

/// Replace this process by a fresh start of the same command line.
pub fn restart_process(reason: &str) -> ! {
    use std::os::unix::process::CommandExt;
    eprintln!(
        "warning: cluster: {reason}; restarting this worker to recover from the last complete \
         snapshot"
    );
    let args: Vec<std::ffi::OsString> = std::fs::read("/proc/self/cmdline")
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| {
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(arg).to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    // The original argv[0] (not /proc/self/exe): Python finds its virtual
    // environment from it.
    let program = args
        .first()
        .cloned()
        .unwrap_or_else(|| std::ffi::OsString::from("/proc/self/exe"));
    let err = std::process::Command::new(program)
        .args(args.iter().skip(1))
        .exec();
    eprintln!("error: cluster: cannot restart this worker: {err}");
    std::process::exit(1);
}
