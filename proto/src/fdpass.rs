//! Handing the arena's segment file descriptors to a client process.
//!
//! gRPC cannot carry file descriptors, so the daemon listens on a second
//! Unix socket next to the gRPC one. A client connects and receives, in one
//! or more `sendmsg` calls, the segment table (id and size of each segment)
//! with the segments' memfds attached as `SCM_RIGHTS` ancillary data. The
//! client maps each segment read-only once per session; leases then name
//! `(segment, offset, length)` within those mappings.
//!
//! Wire format of one message (little-endian): `u32 total`, `u32 count`,
//! then `count` × (`u32 id`, `u64 size`); `count` descriptors ride along.
//! Messages repeat until `total` segments were sent.
//!
//! After the table, a client may register one memory file for uploads on
//! the same connection (see the `Upload` call): it sends [`REGISTER`] with
//! the file's descriptor attached, and the daemon answers `1` and a
//! [`TOKEN_LEN`]-byte token, or `0` and a UTF-8 reason. The registration
//! lasts as long as the connection stays open.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// The request registering an upload memory file (one descriptor attached).
pub const REGISTER: &[u8; 4] = b"UPLD";
/// Length of a registration token.
pub const TOKEN_LEN: usize = 16;
/// Longest reason sent with a refused registration.
const MAX_REASON: usize = 512;

/// Descriptors per message: the kernel accepts at most 253 (SCM_MAX_FD).
const BATCH: usize = 200;
const HEADER: usize = 8;
const ENTRY: usize = 12;

/// One arena segment as the client receives it.
#[derive(Debug)]
pub struct SegmentFd {
    /// Segment id, as named by leases.
    pub id: u32,
    /// Size in bytes (the length to map).
    pub size: u64,
    /// The memfd.
    pub fd: OwnedFd,
}

/// Sends the segment table and descriptors over `sock`.
pub fn send_segments(sock: &UnixStream, segments: &[(u32, u64, BorrowedFd<'_>)]) -> io::Result<()> {
    let total = segments.len() as u32;
    if segments.is_empty() {
        return send(sock, &header(total, 0), &[]);
    }
    for batch in segments.chunks(BATCH) {
        let mut buf = header(total, batch.len() as u32);
        for (id, size, _) in batch {
            buf.extend_from_slice(&id.to_le_bytes());
            buf.extend_from_slice(&size.to_le_bytes());
        }
        let fds: Vec<RawFd> = batch.iter().map(|(_, _, fd)| fd.as_raw_fd()).collect();
        send(sock, &buf, &fds)?;
    }
    Ok(())
}

/// Receives what [`send_segments`] sent.
pub fn recv_segments(sock: &UnixStream) -> io::Result<Vec<SegmentFd>> {
    let mut out = Vec::new();
    loop {
        let (bytes, fds) = recv(sock)?;
        if bytes.len() < HEADER {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "descriptor socket closed early",
            ));
        }
        let total = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
        let count = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
        if bytes.len() != HEADER + count * ENTRY || fds.len() != count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed segment table",
            ));
        }
        for (i, fd) in fds.into_iter().enumerate() {
            let e = &bytes[HEADER + i * ENTRY..HEADER + (i + 1) * ENTRY];
            out.push(SegmentFd {
                id: u32::from_le_bytes(e[0..4].try_into().expect("4 bytes")),
                size: u64::from_le_bytes(e[4..12].try_into().expect("8 bytes")),
                fd,
            });
        }
        if out.len() >= total {
            return Ok(out);
        }
    }
}

fn header(total: u32, count: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + count as usize * ENTRY);
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b
}

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) as usize }
}

fn send(sock: &impl AsFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = vec![0u8; cmsg_space(fds.len().max(1))];
    // SAFETY: msghdr is plain data; zeroed is a valid initial state.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: the control buffer is large enough for one header with
        // `fds.len()` descriptors (CMSG_SPACE above); CMSG_FIRSTHDR of a
        // message with a non-empty control buffer is non-null.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg) as *mut RawFd,
                fds.len(),
            );
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_fd().as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short sendmsg of segment table",
        ));
    }
    Ok(())
}

fn recv(sock: &impl AsFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = vec![0u8; HEADER + BATCH * ENTRY];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = vec![0u8; cmsg_space(BATCH)];
    // SAFETY: msghdr is plain data; zeroed is a valid initial state.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = control.len() as _;
    // SAFETY: msg points at live buffers; MSG_CMSG_CLOEXEC marks received
    // descriptors close-on-exec.
    let n = unsafe { libc::recvmsg(sock.as_fd().as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote, within
    // msg_controllen; each SCM_RIGHTS payload is an array of descriptors
    // that now belong to this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / std::mem::size_of::<RawFd>();
                let ptr = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(ptr.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "descriptors truncated",
        ));
    }
    data.truncate(n as usize);
    Ok((data, fds))
}

/// Client: asks to register `memory` for uploads (after the segment table
/// was received).
pub fn send_registration(sock: &UnixStream, memory: BorrowedFd<'_>) -> io::Result<()> {
    send(sock, REGISTER, &[memory.as_raw_fd()])
}

/// Client: the daemon's answer to [`send_registration`]: the token, or the
/// daemon's reason for refusing.
pub fn recv_registered(sock: &UnixStream) -> io::Result<Result<[u8; TOKEN_LEN], String>> {
    let (bytes, _) = recv(sock)?;
    match bytes.split_first() {
        Some((1, token)) if token.len() == TOKEN_LEN => {
            Ok(Ok(token.try_into().expect("TOKEN_LEN bytes")))
        }
        Some((0, reason)) => Ok(Err(String::from_utf8_lossy(reason).into_owned())),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the descriptor socket without answering the registration",
        )),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed registration answer",
        )),
    }
}

/// What a client sent after the segment table.
#[derive(Debug)]
pub enum Request {
    /// The client closed the connection.
    Closed,
    /// A registration of this memory file.
    Register(OwnedFd),
    /// Anything else (the descriptors that came with it are closed).
    Malformed,
}

/// Daemon: reads the client's next request; `WouldBlock` on a non-blocking
/// socket with nothing to read.
pub fn recv_request(sock: &impl AsFd) -> io::Result<Request> {
    let (bytes, mut fds) = recv(sock)?;
    Ok(match (bytes.as_slice(), fds.len()) {
        ([], _) => Request::Closed,
        (b, 1) if b == REGISTER => Request::Register(fds.pop().expect("one")),
        _ => Request::Malformed,
    })
}

/// Daemon: answers a registration with its token.
pub fn send_registered(sock: &impl AsFd, token: &[u8; TOKEN_LEN]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(1 + TOKEN_LEN);
    msg.push(1);
    msg.extend_from_slice(token);
    send(sock, &msg, &[])
}

/// Daemon: refuses a registration, saying why.
pub fn send_refused(sock: &impl AsFd, reason: &str) -> io::Result<()> {
    let mut msg = vec![0u8];
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    msg.extend_from_slice(&reason.as_bytes()[..end]);
    send(sock, &msg, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_arrive_and_refer_to_the_same_files() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut files: Vec<std::fs::File> = (0..205).map(|_| tempfile_with(b"x")).collect();
        files[3].write_all(b"segment three").unwrap();
        let table: Vec<(u32, u64, BorrowedFd<'_>)> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (i as u32 + 10, 4096 * i as u64, f.as_fd()))
            .collect();
        send_segments(&a, &table).unwrap();
        let got = recv_segments(&b).unwrap();
        assert_eq!(got.len(), 205, "two batches");
        assert_eq!((got[204].id, got[204].size), (214, 4096 * 204));
        let mut f = std::fs::File::from(got[3].fd.try_clone().unwrap());
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "xsegment three");
    }

    #[test]
    fn an_empty_table_is_one_message() {
        let (a, b) = UnixStream::pair().unwrap();
        send_segments(&a, &[]).unwrap();
        assert!(recv_segments(&b).unwrap().is_empty());
    }

    #[test]
    fn a_closed_socket_is_an_error_not_a_hang() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(recv_segments(&b).is_err());
    }

    #[test]
    fn a_registration_carries_its_descriptor_and_gets_its_answer() {
        let (client, daemon) = UnixStream::pair().unwrap();
        let mut memory = tempfile_with(b"upload bytes");
        send_registration(&client, memory.as_fd()).unwrap();
        let Request::Register(fd) = recv_request(&daemon).unwrap() else {
            panic!("not a registration");
        };
        let mut f = std::fs::File::from(fd);
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "upload bytes");
        memory.write_all(b"!").unwrap();
        send_registered(&daemon, &[7; TOKEN_LEN]).unwrap();
        assert_eq!(recv_registered(&client).unwrap(), Ok([7; TOKEN_LEN]));
        send_refused(&daemon, &"é".repeat(400)).unwrap();
        let reason = recv_registered(&client).unwrap().unwrap_err();
        assert_eq!(
            reason.len(),
            512,
            "cut at a character boundary within the limit"
        );
        drop(client);
        assert!(matches!(recv_request(&daemon).unwrap(), Request::Closed));
    }

    #[test]
    fn a_request_without_exactly_one_descriptor_is_malformed() {
        let (client, daemon) = UnixStream::pair().unwrap();
        send(&client, REGISTER, &[]).unwrap();
        assert!(matches!(recv_request(&daemon).unwrap(), Request::Malformed));
        let (a, b) = (tempfile_with(b"a"), tempfile_with(b"b"));
        send(&client, REGISTER, &[a.as_raw_fd(), b.as_raw_fd()]).unwrap();
        assert!(matches!(recv_request(&daemon).unwrap(), Request::Malformed));
        let c = tempfile_with(b"c");
        send(&client, b"NOPE", &[c.as_raw_fd()]).unwrap();
        assert!(matches!(recv_request(&daemon).unwrap(), Request::Malformed));
    }

    fn tempfile_with(data: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        f
    }
}
