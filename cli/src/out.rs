//! Standard output like a Unix tool's: `outln!`/`out!` write to stdout and, when the reader has
//! gone (`jobq … | head -1`), end the process quietly with status 0, as `head` expects, instead
//! of panicking as `println!` does. Everything a command prints is written after its database
//! work is committed, so nothing is cut short by the early exit; the demo's throwaway server is
//! stopped first.

use std::io::Write;

/// `println!` to stdout, ending the process quietly when the pipe is closed.
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` to stdout, ending the process quietly when the pipe is closed.
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*)) };
}

/// Writes and flushes `args`; a closed pipe exits 0, any other write error exits 1.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        // Exiting runs no destructors: stop what must not outlive the process first.
        crate::throwaway::kill_now();
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("jobq: error: writing to standard output: {e}");
        std::process::exit(1);
    }
}
