fn main() {
    let path = std::env::args().nth(1).unwrap();
    let data = vec![0u8; 16];
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("model.layers.{}.block.{}.weight", i / 16, i % 16))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = names
        .iter()
        .map(|n| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, std::path::Path::new(&path)).unwrap();
}
