//! CIFAR-10 in its official binary layout.
//!
//! Each file (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`) is a sequence of
//! 3073-byte records: one label byte (0–9), then 1024 red, 1024 green and 1024 blue bytes of a
//! 32×32 image, row-major. `batches.meta.txt` lists the class names.

use md5::{Digest, Md5};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// Bytes per record.
pub const RECORD: usize = 3073;
/// Pixels per image plane.
pub const PLANE: usize = 1024;
/// Image side.
pub const SIDE: usize = 32;
/// Per-channel mean of the CIFAR-10 training set (the reference's values).
pub const MEAN: [f32; 3] = [0.491_399_7, 0.482_158_3, 0.446_531_2];
/// Per-channel standard deviation of the CIFAR-10 training set.
pub const STD: [f32; 3] = [0.247_032_3, 0.243_485_05, 0.261_587_7];
/// md5 of the official `cifar-10-binary.tar.gz`.
pub const ARCHIVE_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The official archive's address.
pub const ARCHIVE_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// The class names, in label order.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Errors reading CIFAR-10.
#[derive(Debug, thiserror::Error)]
pub enum CifarError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file's length is not a whole number of records.
    #[error("{path}: {len} bytes is not a whole number of {RECORD}-byte records (official files are 30,730,000 bytes)")]
    Length {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// A label byte is out of range.
    #[error("{path}: record {record} has label {label}; labels must be 0..=9")]
    Label {
        /// The file.
        path: PathBuf,
        /// Record index.
        record: usize,
        /// The bad label.
        label: u8,
    },
    /// No training file was found.
    #[error("{dir}: no CIFAR-10 training files (data_batch_1.bin ... data_batch_5.bin); download with `--download` or see the README")]
    NoTrainFiles {
        /// The directory searched.
        dir: PathBuf,
    },
    /// The archive checksum does not match.
    #[error("{path}: md5 {got} does not match the official {expected}")]
    Checksum {
        /// The archive.
        path: PathBuf,
        /// Computed md5.
        got: String,
        /// Expected md5.
        expected: String,
    },
    /// The archive holds something unexpected.
    #[error("{path}: unexpected archive member `{member}`")]
    Member {
        /// The archive.
        path: PathBuf,
        /// The member's path.
        member: String,
    },
    /// An empty selection.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CifarError + '_ {
    move |source| CifarError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Images and labels held as raw bytes (3072 bytes per image, planar RGB).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cifar10 {
    /// Planar RGB bytes, 3072 per image.
    pub pixels: Vec<u8>,
    /// Labels 0..=9.
    pub labels: Vec<u8>,
}

impl Cifar10 {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Parse one file's bytes (strictly).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, CifarError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
            return Err(CifarError::Length {
                path: path.to_path_buf(),
                len: bytes.len(),
            });
        }
        let n = bytes.len() / RECORD;
        let mut out = Cifar10 {
            pixels: Vec::with_capacity(n * (RECORD - 1)),
            labels: Vec::with_capacity(n),
        };
        for (record, r) in bytes.chunks_exact(RECORD).enumerate() {
            if r[0] > 9 {
                return Err(CifarError::Label {
                    path: path.to_path_buf(),
                    record,
                    label: r[0],
                });
            }
            out.labels.push(r[0]);
            out.pixels.extend_from_slice(&r[1..]);
        }
        Ok(out)
    }

    /// Read one file.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Self, CifarError> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(io(path))?;
        Self::parse(&bytes, path)
    }

    /// Serialise in the official layout (the inverse of [`Cifar10::parse`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * RECORD);
        for (i, l) in self.labels.iter().enumerate() {
            out.push(*l);
            out.extend_from_slice(&self.pixels[i * 3072..(i + 1) * 3072]);
        }
        out
    }

    /// Append another set.
    pub fn extend(&mut self, other: Cifar10) {
        self.pixels.extend(other.pixels);
        self.labels.extend(other.labels);
    }

    /// The training set: every `data_batch_N.bin` (N = 1..=5) present in `dir`, in order.
    /// At least one must exist; each one present is validated.
    pub fn load_train(dir: impl AsRef<Path>) -> Result<Self, CifarError> {
        let dir = dir.as_ref();
        let mut out = Cifar10::default();
        let mut found = false;
        for i in 1..=5 {
            let p = dir.join(format!("data_batch_{i}.bin"));
            if p.exists() {
                out.extend(Self::read_file(&p)?);
                found = true;
            }
        }
        if !found {
            return Err(CifarError::NoTrainFiles {
                dir: dir.to_path_buf(),
            });
        }
        Ok(out)
    }

    /// The test set (`test_batch.bin`).
    pub fn load_test(dir: impl AsRef<Path>) -> Result<Self, CifarError> {
        Self::read_file(dir.as_ref().join("test_batch.bin"))
    }

    /// Images per class.
    pub fn class_counts(&self) -> [usize; 10] {
        let mut c = [0; 10];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }

    /// The subset at `indices`.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut out = Cifar10::default();
        for &i in indices {
            out.labels.push(self.labels[i]);
            out.pixels
                .extend_from_slice(&self.pixels[i * 3072..(i + 1) * 3072]);
        }
        out
    }

    /// The first `per_class` images of every class, in file order (how the shipped sample was
    /// cut).
    pub fn first_per_class(&self, per_class: usize) -> Self {
        let mut taken = [0usize; 10];
        let idx: Vec<usize> = (0..self.len())
            .filter(|&i| {
                let c = self.labels[i] as usize;
                taken[c] += 1;
                taken[c] <= per_class
            })
            .collect();
        self.subset(&idx)
    }
}

/// Read the class names from `batches.meta.txt` (one per line; blank lines ignored).
pub fn read_class_names(dir: impl AsRef<Path>) -> Result<Vec<String>, CifarError> {
    let p = dir.as_ref().join("batches.meta.txt");
    let text = fs::read_to_string(&p).map_err(io(&p))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// md5 of a file, as lowercase hex.
pub fn md5_file(path: impl AsRef<Path>) -> Result<String, CifarError> {
    let path = path.as_ref();
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The members extracted from the official archive.
pub const ARCHIVE_MEMBERS: [&str; 8] = [
    "cifar-10-batches-bin/batches.meta.txt",
    "cifar-10-batches-bin/data_batch_1.bin",
    "cifar-10-batches-bin/data_batch_2.bin",
    "cifar-10-batches-bin/data_batch_3.bin",
    "cifar-10-batches-bin/data_batch_4.bin",
    "cifar-10-batches-bin/data_batch_5.bin",
    "cifar-10-batches-bin/test_batch.bin",
    "cifar-10-batches-bin/readme.html",
];

/// Verify `archive` against `expected_md5` (the official checksum for real downloads), then
/// extract only the expected regular-file members (no links, no paths outside
/// `cifar-10-batches-bin/`) into `dest`. Files are written to a temporary name and renamed, so an
/// interrupted extraction leaves no half-written file. Returns the extracted directory.
pub fn verify_and_extract(
    archive: impl AsRef<Path>,
    expected_md5: &str,
    dest: impl AsRef<Path>,
) -> Result<PathBuf, CifarError> {
    let archive = archive.as_ref();
    let dest = dest.as_ref();
    let got = md5_file(archive)?;
    if got != expected_md5 {
        return Err(CifarError::Checksum {
            path: archive.to_path_buf(),
            got,
            expected: expected_md5.to_string(),
        });
    }
    let f = fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let out_dir = dest.join("cifar-10-batches-bin");
    fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
    for entry in tar.entries().map_err(io(archive))? {
        let mut entry = entry.map_err(io(archive))?;
        let name = entry
            .path()
            .map_err(io(archive))?
            .to_string_lossy()
            .into_owned();
        let name = name.trim_start_matches("./").to_string();
        if entry.header().entry_type().is_dir()
            && name.trim_end_matches('/') == "cifar-10-batches-bin"
        {
            continue;
        }
        if !entry.header().entry_type().is_file() || !ARCHIVE_MEMBERS.contains(&name.as_str()) {
            return Err(CifarError::Member {
                path: archive.to_path_buf(),
                member: name,
            });
        }
        let file_name = name.rsplit('/').next().unwrap_or_default().to_string();
        let target = out_dir.join(&file_name);
        let tmp = out_dir.join(format!(".{file_name}.part"));
        let mut buf = Vec::new();
        entry.read_to_end(&mut buf).map_err(io(archive))?;
        fs::write(&tmp, &buf).map_err(io(&tmp))?;
        fs::rename(&tmp, &target).map_err(io(&target))?;
    }
    Ok(out_dir)
}

/// Download the official archive to `dest/cifar-10-binary.tar.gz` (skipped when a file with the
/// right checksum is already there), verify its md5, and extract it with
/// [`verify_and_extract`]. Returns the directory holding the `.bin` files. The download goes to a
/// `.part` file first, so an interrupted download never passes for a complete one.
#[cfg(feature = "download")]
pub fn download(dest: impl AsRef<Path>) -> Result<PathBuf, CifarError> {
    let dest = dest.as_ref();
    fs::create_dir_all(dest).map_err(io(dest))?;
    let archive = dest.join("cifar-10-binary.tar.gz");
    let have = archive.exists() && md5_file(&archive)? == ARCHIVE_MD5;
    if !have {
        let part = dest.join("cifar-10-binary.tar.gz.part");
        let resp = ureq::get(ARCHIVE_URL)
            .call()
            .map_err(|e| CifarError::Invalid(format!("downloading {ARCHIVE_URL}: {e}")))?;
        let mut reader = resp.into_body().into_reader();
        let mut f = fs::File::create(&part).map_err(io(&part))?;
        std::io::copy(&mut reader, &mut f).map_err(io(&part))?;
        f.sync_all().map_err(io(&part))?;
        fs::rename(&part, &archive).map_err(io(&archive))?;
    }
    verify_and_extract(&archive, ARCHIVE_MD5, dest)
}

/// Augmentation applied to training images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Random 32×32 crop of the image zero-padded by this many pixels (4 in DARTS; 0 = off).
    pub crop_padding: usize,
    /// Random horizontal flip.
    pub flip: bool,
    /// Cutout square side (16 when training from scratch; `None` = off).
    pub cutout: Option<usize>,
}

impl Augment {
    /// No augmentation (validation and test).
    pub const NONE: Augment = Augment {
        crop_padding: 0,
        flip: false,
        cutout: None,
    };
    /// The search setting: crop + flip.
    pub const SEARCH: Augment = Augment {
        crop_padding: 4,
        flip: true,
        cutout: None,
    };
}

/// Normalise and augment image `i` of `set` into `out` (3072 floats, CHW).
pub fn prepare_image(set: &Cifar10, i: usize, aug: &Augment, rng: &mut impl Rng, out: &mut [f32]) {
    let px = &set.pixels[i * 3072..(i + 1) * 3072];
    let p = aug.crop_padding as i64;
    let (dy, dx) = if p > 0 {
        (
            rng.random_range(-p..=p) as isize,
            rng.random_range(-p..=p) as isize,
        )
    } else {
        (0, 0)
    };
    let flip = aug.flip && rng.random_bool(0.5);
    for c in 0..3 {
        for y in 0..SIDE {
            for x in 0..SIDE {
                let sy = y as isize + dy;
                let sx0 = if flip { SIDE - 1 - x } else { x } as isize + dx;
                let v = if sy < 0 || sy >= SIDE as isize || sx0 < 0 || sx0 >= SIDE as isize {
                    0.0 // zero padding (before normalisation, as torchvision pads the image)
                } else {
                    px[c * PLANE + sy as usize * SIDE + sx0 as usize] as f32 / 255.0
                };
                out[c * PLANE + y * SIDE + x] = (v - MEAN[c]) / STD[c];
            }
        }
    }
    if let Some(len) = aug.cutout {
        // Reference Cutout: centre uniform in the image, square clipped at the borders, zeroed
        // after normalisation.
        let cy = rng.random_range(0..SIDE) as isize;
        let cx = rng.random_range(0..SIDE) as isize;
        let h = (len / 2) as isize;
        let (y0, y1) = (
            (cy - h).max(0) as usize,
            ((cy + h).min(SIDE as isize)) as usize,
        );
        let (x0, x1) = (
            (cx - h).max(0) as usize,
            ((cx + h).min(SIDE as isize)) as usize,
        );
        for c in 0..3 {
            for y in y0..y1 {
                for x in x0..x1 {
                    out[c * PLANE + y * SIDE + x] = 0.0;
                }
            }
        }
    }
}

/// A batch on the host: images `[n, 3, 32, 32]` as floats, labels.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    /// Normalised pixels, NCHW.
    pub images: Vec<f32>,
    /// Labels.
    pub labels: Vec<u8>,
}

impl HostBatch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Dimensions `[n, 3, 32, 32]`.
    pub fn dims(&self) -> [usize; 4] {
        [self.len(), 3, SIDE, SIDE]
    }
}

/// The search split of the training set: the first `⌊portion·n⌋` indices train the weights,
/// the rest drive the architecture (reference `train_portion`, default 0.5).
pub fn search_split(n: usize, portion: f64) -> Result<(Vec<usize>, Vec<usize>), CifarError> {
    if !(0.0..=1.0).contains(&portion) {
        return Err(CifarError::Invalid(format!(
            "train portion {portion} must be within [0, 1]"
        )));
    }
    let split = (portion * n as f64).floor() as usize;
    if split == 0 || split == n {
        return Err(CifarError::Invalid(format!(
            "train portion {portion} of {n} images leaves one side of the split empty"
        )));
    }
    Ok(((0..split).collect(), (split..n).collect()))
}

/// Seed for (run seed, epoch, stream) so that an epoch's order and augmentation can be
/// recomputed exactly on resume.
pub fn derive_seed(seed: u64, epoch: usize, stream: u64) -> u64 {
    // SplitMix64 mixing of the three inputs.
    let mut z = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Shuffled batches over a subset of a dataset, prepared on a background thread (two batches
/// ahead) while the caller computes. The order and augmentation of epoch `e` depend only on
/// `(seed, e)`, so a resumed run sees the same data as an uninterrupted one.
#[derive(Clone, Debug)]
pub struct Loader {
    data: Arc<Cifar10>,
    indices: Vec<usize>,
    /// Batch size.
    pub batch_size: usize,
    /// Augmentation.
    pub augment: Augment,
    /// Shuffle each epoch.
    pub shuffle: bool,
    /// Drop a last incomplete batch.
    pub drop_last: bool,
    /// Base seed.
    pub seed: u64,
    /// Stream id (separates e.g. the train and val streams of one run).
    pub stream: u64,
}

impl Loader {
    /// A loader over `indices` of `data`.
    pub fn new(data: Arc<Cifar10>, indices: Vec<usize>, batch_size: usize) -> Self {
        Self {
            data,
            indices,
            batch_size: batch_size.max(1),
            augment: Augment::NONE,
            shuffle: false,
            drop_last: false,
            seed: 0,
            stream: 0,
        }
    }

    /// Number of batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.indices.len() / self.batch_size
        } else {
            self.indices.len().div_ceil(self.batch_size)
        }
    }

    /// The index order of `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut idx = self.indices.clone();
        if self.shuffle {
            let mut rng = StdRng::seed_from_u64(derive_seed(self.seed, epoch, self.stream));
            idx.shuffle(&mut rng);
        }
        idx
    }

    /// Build batch `b` of `epoch` synchronously.
    pub fn batch(&self, epoch: usize, b: usize, order: &[usize]) -> HostBatch {
        let lo = b * self.batch_size;
        let hi = (lo + self.batch_size).min(order.len());
        let n = hi - lo;
        let mut images = vec![0.0f32; n * 3072];
        let mut labels = Vec::with_capacity(n);
        let mut rng = StdRng::seed_from_u64(derive_seed(
            self.seed,
            epoch,
            self.stream ^ ((b as u64 + 1) << 8),
        ));
        for (k, &i) in order[lo..hi].iter().enumerate() {
            prepare_image(
                &self.data,
                i,
                &self.augment,
                &mut rng,
                &mut images[k * 3072..(k + 1) * 3072],
            );
            labels.push(self.data.labels[i]);
        }
        HostBatch { images, labels }
    }

    /// The batches of `epoch`, from batch `start` on, prepared ahead on a background thread.
    pub fn epoch(&self, epoch: usize, start: usize) -> BatchIter {
        let (tx, rx) = sync_channel(2);
        let me = self.clone();
        std::thread::spawn(move || {
            let order = me.order(epoch);
            for b in start..me.batches_per_epoch() {
                if tx.send(me.batch(epoch, b, &order)).is_err() {
                    break;
                }
            }
        });
        BatchIter { rx }
    }
}

/// Iterator over prefetched batches.
pub struct BatchIter {
    rx: Receiver<HostBatch>,
}

impl Iterator for BatchIter {
    type Item = HostBatch;
    fn next(&mut self) -> Option<HostBatch> {
        self.rx.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(n: usize) -> Cifar10 {
        let mut d = Cifar10::default();
        for i in 0..n {
            d.labels.push((i % 10) as u8);
            d.pixels
                .extend((0..3072).map(|k| ((i * 31 + k * 7) % 256) as u8));
        }
        d
    }

    #[test]
    fn byte_exact_round_trip() {
        let d = synthetic(7);
        let bytes = d.to_bytes();
        assert_eq!(bytes.len(), 7 * RECORD);
        let back = Cifar10::parse(&bytes, Path::new("x")).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn every_corruption_is_a_typed_error() {
        let bytes = synthetic(3).to_bytes();
        let p = Path::new("data_batch_1.bin");
        assert!(matches!(
            Cifar10::parse(&bytes[..bytes.len() - 1], p),
            Err(CifarError::Length { len, .. }) if len == 3 * RECORD - 1
        ));
        assert!(matches!(
            Cifar10::parse(&[], p),
            Err(CifarError::Length { .. })
        ));
        let mut bad = bytes.clone();
        bad[RECORD] = 10;
        let e = Cifar10::parse(&bad, p).unwrap_err();
        assert!(matches!(
            e,
            CifarError::Label {
                record: 1,
                label: 10,
                ..
            }
        ));
        assert!(e
            .to_string()
            .contains("data_batch_1.bin: record 1 has label 10"));
        let dir = std::env::temp_dir().join(format!("darts-cifar-missing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            Cifar10::load_train(&dir),
            Err(CifarError::NoTrainFiles { .. })
        ));
        let e = Cifar10::load_test(&dir).unwrap_err();
        assert!(matches!(e, CifarError::Io { .. }));
        assert!(e.to_string().contains("test_batch.bin"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn split_and_errors() {
        let (a, b) = search_split(10, 0.5).unwrap();
        assert_eq!(a, vec![0, 1, 2, 3, 4]);
        assert_eq!(b, vec![5, 6, 7, 8, 9]);
        assert!(search_split(10, 1.5).is_err());
        assert!(search_split(10, 0.0).is_err());
    }

    #[test]
    fn normalisation_and_augmentation() {
        let d = synthetic(2);
        let mut rng = StdRng::seed_from_u64(1);
        let mut out = vec![0.0; 3072];
        prepare_image(&d, 0, &Augment::NONE, &mut rng, &mut out);
        let expect = (d.pixels[5] as f32 / 255.0 - MEAN[0]) / STD[0];
        assert!((out[5] - expect).abs() < 1e-6);
        let cut = Augment {
            crop_padding: 0,
            flip: false,
            cutout: Some(16),
        };
        prepare_image(&d, 0, &cut, &mut rng, &mut out);
        let zeros = out.iter().filter(|v| **v == 0.0).count();
        assert!((3 * 64..=3 * 256).contains(&zeros), "{zeros}");
        // Flip only: row 0 is mirrored.
        let flip = Augment {
            crop_padding: 0,
            flip: true,
            cutout: None,
        };
        let mut seen_flip = false;
        for s in 0..20 {
            let mut rng = StdRng::seed_from_u64(s);
            prepare_image(&d, 1, &flip, &mut rng, &mut out);
            let first = (d.pixels[3072 + 31] as f32 / 255.0 - MEAN[0]) / STD[0];
            if (out[0] - first).abs() < 1e-6 {
                seen_flip = true;
            }
        }
        assert!(seen_flip);
    }

    #[test]
    fn loader_is_deterministic_per_epoch_and_prefetches_everything() {
        let d = Arc::new(synthetic(25));
        let mut l = Loader::new(d, (0..25).collect(), 8);
        l.shuffle = true;
        l.augment = Augment::SEARCH;
        l.seed = 7;
        assert_eq!(l.batches_per_epoch(), 4);
        let a: Vec<HostBatch> = l.epoch(3, 0).collect();
        let b: Vec<HostBatch> = l.epoch(3, 0).collect();
        assert_eq!(a, b);
        assert_eq!(a.iter().map(|x| x.len()).sum::<usize>(), 25);
        let resumed: Vec<HostBatch> = l.epoch(3, 2).collect();
        assert_eq!(resumed, a[2..].to_vec());
        assert_ne!(l.order(3), l.order(4));
        l.drop_last = true;
        assert_eq!(l.epoch(0, 0).count(), 3);
    }

    #[test]
    fn verified_extraction_of_a_built_archive() {
        let dir = std::env::temp_dir().join(format!("darts-cifar-archive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let build = |members: &[(&str, Vec<u8>)]| -> PathBuf {
            let path = dir.join("a.tar.gz");
            let f = std::fs::File::create(&path).unwrap();
            let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            let mut t = tar::Builder::new(gz);
            for (name, data) in members {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                t.append_data(&mut h, name, data.as_slice()).unwrap();
            }
            t.into_inner().unwrap().finish().unwrap();
            path
        };
        let data = synthetic(4).to_bytes();
        let good = build(&[
            ("cifar-10-batches-bin/data_batch_1.bin", data.clone()),
            (
                "cifar-10-batches-bin/batches.meta.txt",
                b"airplane\nautomobile\n".to_vec(),
            ),
        ]);
        let sum = md5_file(&good).unwrap();
        let out = dir.join("out");
        let e = verify_and_extract(&good, ARCHIVE_MD5, &out).unwrap_err();
        assert!(matches!(e, CifarError::Checksum { .. }));
        assert!(!out.join("cifar-10-batches-bin/data_batch_1.bin").exists());
        let got = verify_and_extract(&good, &sum, &out).unwrap();
        assert_eq!(Cifar10::load_train(&got).unwrap(), synthetic(4));
        assert_eq!(
            read_class_names(&got).unwrap(),
            vec!["airplane", "automobile"]
        );
        for name in ["elsewhere/data_batch_1.bin", "cifar-10-batches-bin/run.sh"] {
            let evil = build(&[(name, data.clone())]);
            let sum = md5_file(&evil).unwrap();
            let e = verify_and_extract(&evil, &sum, dir.join("out2")).unwrap_err();
            assert!(matches!(e, CifarError::Member { .. }), "{e}");
            assert!(!dir.join("out2/cifar-10-batches-bin/run.sh").exists());
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
