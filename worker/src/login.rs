//! `savestream-worker login`: the terminal side of the interactive user
//! login. [`TerminalPrompt`] asks for the phone number, the code and the 2FA
//! password on standard input (the password without echo when standard
//! input is a terminal) and prints progress; `savestream_telegram::login`
//! runs the dialogue with Telegram and writes the session file.
//!
//! The answers go to Telegram only: nothing here logs them, and the
//! password is never echoed or printed.

use std::io::{self, BufRead, Write};

use savestream_telegram::LoginPrompt;

/// Prompts on standard output, reads answers from standard input.
pub struct TerminalPrompt<R: BufRead + Send> {
    input: R,
}

impl TerminalPrompt<io::BufReader<io::Stdin>> {
    /// A prompt on this process's standard input and output. (`Stdin`, not
    /// its lock: the prompt must be `Send` and a lock is not.)
    pub fn stdio() -> TerminalPrompt<io::BufReader<io::Stdin>> {
        TerminalPrompt {
            input: io::BufReader::new(io::stdin()),
        }
    }
}

impl<R: BufRead + Send> TerminalPrompt<R> {
    /// A prompt that reads its answers from `input` (tests script them).
    pub fn new(input: R) -> TerminalPrompt<R> {
        TerminalPrompt { input }
    }

    fn ask(&mut self, question: &str) -> io::Result<String> {
        print!("{question}: ");
        io::stdout().flush()?;
        self.read_answer()
    }

    fn read_answer(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "standard input ended before the answer: run the login in a terminal",
            ));
        }
        Ok(line.trim().to_owned())
    }
}

impl<R: BufRead + Send> LoginPrompt for TerminalPrompt<R> {
    fn phone(&mut self) -> io::Result<String> {
        self.ask("Phone number, in international form (+15551234567)")
    }

    fn code(&mut self) -> io::Result<String> {
        self.ask("The login code Telegram sent you")
    }

    fn password(&mut self, hint: Option<&str>) -> io::Result<String> {
        match hint {
            Some(hint) => print!("2FA password (hint: {hint}): "),
            None => print!("2FA password: "),
        }
        io::stdout().flush()?;
        let answer = {
            let _echo_off = EchoOff::new();
            self.read_answer()
        };
        // The newline the user typed was not echoed.
        println!();
        answer
    }

    fn tell(&mut self, message: &str) {
        println!("{message}");
    }
}

/// Turns terminal echo off for as long as it lives, when standard input is
/// a terminal; does nothing otherwise (a script piping answers in).
struct EchoOff {
    #[cfg(unix)]
    saved: Option<libc::termios>,
}

impl EchoOff {
    #[cfg(unix)]
    fn new() -> EchoOff {
        use std::io::IsTerminal;
        if !io::stdin().is_terminal() {
            return EchoOff { saved: None };
        }
        // SAFETY: tcgetattr and tcsetattr only read and write the termios
        // struct we hand them, for file descriptor 0, which stays open for
        // the life of the process.
        unsafe {
            let mut termios: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut termios) != 0 {
                return EchoOff { saved: None };
            }
            let saved = termios;
            termios.c_lflag &= !libc::ECHO;
            termios.c_lflag |= libc::ECHONL;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &termios) != 0 {
                return EchoOff { saved: None };
            }
            EchoOff { saved: Some(saved) }
        }
    }

    #[cfg(not(unix))]
    fn new() -> EchoOff {
        EchoOff {}
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = self.saved.take() {
            // SAFETY: as in `new`; `saved` is the state tcgetattr gave us.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_line_by_line_and_trimmed() {
        let mut prompt = TerminalPrompt::new(io::Cursor::new(b"+15551234567\n 12345 \nsecret\n".to_vec()));
        assert_eq!(prompt.phone().unwrap(), "+15551234567");
        assert_eq!(prompt.code().unwrap(), "12345");
        assert_eq!(prompt.password(Some("pet")).unwrap(), "secret");
        let error = prompt.code().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
