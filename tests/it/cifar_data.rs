//! The CIFAR-10 reader on the shared real data, and the shipped sample.

use darts::data::cifar::{read_class_names, Cifar10, CLASSES};

#[test]
fn real_cifar10_class_counts() {
    let Some(dir) = crate::common::real_data("cifar-10-batches-bin") else {
        return;
    };
    let train = Cifar10::load_train(&dir).unwrap();
    assert_eq!(train.len(), 10_000);
    assert_eq!(
        train.class_counts(),
        [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    );
    let test = Cifar10::load_test(&dir).unwrap();
    assert_eq!(test.class_counts(), [1000; 10]);
    assert_eq!(read_class_names(&dir).unwrap(), CLASSES);
    // Byte-exact round trip of the real file.
    let bytes = std::fs::read(dir.join("data_batch_1.bin")).unwrap();
    assert_eq!(
        Cifar10::read_file(dir.join("data_batch_1.bin"))
            .unwrap()
            .to_bytes(),
        bytes
    );
}

#[test]
fn shipped_sample_is_a_cut_of_the_real_data() {
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-sample");
    let train = Cifar10::load_train(&sample).unwrap();
    let test = Cifar10::load_test(&sample).unwrap();
    assert_eq!(train.class_counts(), [100; 10]);
    assert_eq!(test.class_counts(), [20; 10]);
    if let Some(dir) = crate::common::real_data("cifar-10-batches-bin") {
        let real = Cifar10::load_train(&dir).unwrap();
        assert_eq!(real.first_per_class(100), train);
        assert_eq!(Cifar10::load_test(&dir).unwrap().first_per_class(20), test);
    }
}
