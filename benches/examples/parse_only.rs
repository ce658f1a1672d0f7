fn main() {
    let path = std::env::args().nth(1).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let mut n = 0;
    for _ in 0..2000 {
        n += safeckpt_format::Header::parse(&bytes).unwrap().len();
    }
    println!("{n}");
}
