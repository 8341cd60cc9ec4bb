//! `struct statx` (what the storage domain returns) to `struct stat` (what stat(2) callers get).
//! Shared with `virtuos-redirect`'s supervised mode, which includes this file.

/// Converts a statx record to the `struct stat` the stat family fills.
pub fn statx_to_stat(x: &libc::statx) -> libc::stat {
    // SAFETY: struct stat is plain data; all zeroes is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_dev = libc::makedev(x.stx_dev_major, x.stx_dev_minor);
    st.st_ino = x.stx_ino;
    st.st_nlink = u64::from(x.stx_nlink);
    st.st_mode = u32::from(x.stx_mode);
    st.st_uid = x.stx_uid;
    st.st_gid = x.stx_gid;
    st.st_rdev = libc::makedev(x.stx_rdev_major, x.stx_rdev_minor);
    st.st_size = x.stx_size as i64;
    st.st_blksize = i64::from(x.stx_blksize);
    st.st_blocks = x.stx_blocks as i64;
    st.st_atime = x.stx_atime.tv_sec;
    st.st_atime_nsec = i64::from(x.stx_atime.tv_nsec);
    st.st_mtime = x.stx_mtime.tv_sec;
    st.st_mtime_nsec = i64::from(x.stx_mtime.tv_nsec);
    st.st_ctime = x.stx_ctime.tv_sec;
    st.st_ctime_nsec = i64::from(x.stx_ctime.tv_nsec);
    st
}
