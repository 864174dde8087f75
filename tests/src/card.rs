//! A removable boot medium (SD card, USB stick) behind a mux (MuxPi,
//! SDWire, TypeC mux): either the control host sees it as a block device,
//! or the device under test boots from it.
//!
//! The card's content is a plain file. While the mux points at the control
//! host, the file is reachable there as `/dev/<block_device>` (a link in the
//! control host's scratch root), so `dd of=/dev/sda` writes the card; while
//! it points at the DUT, the link is gone and the DUT boots the card's
//! [`Image`] at its next power cycle.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::image::{Image, ImageError};

/// Which side of the mux the card is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuxSide {
    /// The control host sees the card as a block device ("test server" side).
    ControlHost,
    /// The device under test boots from it.
    Dut,
}

/// The media kinds muxpi's `media` key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// An SD card behind an SDWire (`sdwire` in mux commands).
    Sd,
    /// A USB stick behind a TypeC mux (`typecmux`).
    Usb,
}

impl Media {
    /// The word mux commands use for this media.
    pub fn mux_word(self) -> &'static str {
        match self {
            Media::Sd => "sdwire",
            Media::Usb => "typecmux",
        }
    }
}

struct State {
    side: MuxSide,
    /// Links (in a control host's root) that exist while on that side.
    links: Vec<PathBuf>,
    switches: Vec<MuxSide>,
}

/// A card: a file plus the mux position. Cheap to clone (shared).
#[derive(Clone)]
pub struct Card {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    block_device: String,
    media: Media,
    state: Mutex<State>,
}

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("path", &self.inner.path)
            .field("block_device", &self.inner.block_device)
            .field("side", &self.side())
            .finish()
    }
}

impl Card {
    /// A card stored in the file `path` (created empty if missing), shown
    /// to the control host as `/dev/<block_device>`.
    pub fn new(path: &Path, block_device: &str, media: Media) -> std::io::Result<Card> {
        if !path.exists() {
            std::fs::write(path, b"")?;
        }
        Ok(Card {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                block_device: block_device.trim_start_matches("/dev/").to_string(),
                media,
                state: Mutex::new(State {
                    side: MuxSide::Dut,
                    links: Vec::new(),
                    switches: Vec::new(),
                }),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file holding the card's bytes.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The block device name on the control host (`sda`).
    pub fn block_device(&self) -> &str {
        &self.inner.block_device
    }

    /// `/dev/<block_device>`.
    pub fn device_path(&self) -> String {
        format!("/dev/{}", self.inner.block_device)
    }

    /// SD or USB.
    pub fn media(&self) -> Media {
        self.inner.media
    }

    /// Where the mux points now.
    pub fn side(&self) -> MuxSide {
        self.state().side
    }

    /// Every switch so far, in order.
    pub fn switches(&self) -> Vec<MuxSide> {
        self.state().switches.clone()
    }

    /// Moves the card (and updates the control host's device links).
    pub fn switch(&self, side: MuxSide) {
        let mut st = self.state();
        st.side = side;
        st.switches.push(side);
        for link in &st.links {
            sync_link(link, &self.inner.path, side);
        }
    }

    /// Makes `link` point at the card while it is on the control host side.
    pub(crate) fn attach_link(&self, link: &Path) {
        let mut st = self.state();
        sync_link(link, &self.inner.path, st.side);
        st.links.push(link.to_path_buf());
    }

    /// The card's bytes.
    pub fn bytes(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.inner.path)
    }

    /// Replaces the card's content (a flash done outside the control host).
    pub fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::write(&self.inner.path, bytes)
    }

    /// The image on the card.
    pub fn image(&self) -> Result<Image, ImageError> {
        Image::read_file(&self.inner.path)
    }
}

fn sync_link(link: &Path, target: &Path, side: MuxSide) {
    // Whatever is there (an old link, or a regular file a `dd` created while
    // the card was away) goes.
    let _ = std::fs::remove_file(link);
    if side == MuxSide::ControlHost {
        if let Some(parent) = link.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::os::unix::fs::symlink(target, link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_follow_the_mux() {
        let dir = tempfile::tempdir().unwrap();
        let card = Card::new(&dir.path().join("card.img"), "/dev/sda", Media::Sd).unwrap();
        let link = dir.path().join("root/dev/sda");
        card.attach_link(&link);
        assert_eq!(card.side(), MuxSide::Dut);
        assert!(!link.exists());
        card.switch(MuxSide::ControlHost);
        std::fs::write(&link, Image::ubuntu("24.04", "noble").to_bytes(0)).unwrap();
        assert_eq!(
            card.image().unwrap().pretty_name().unwrap(),
            "Ubuntu 24.04 LTS"
        );
        card.switch(MuxSide::Dut);
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert_eq!(card.switches(), [MuxSide::ControlHost, MuxSide::Dut]);
        assert_eq!(card.device_path(), "/dev/sda");
    }
}
